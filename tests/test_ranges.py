import pytest

from oodml.errors import OodmlError
from oodml.ranges import format_int_list, parse_int_list


@pytest.mark.parametrize("text,expected", [
    ("3", (3,)), ("1,3,5", (1, 3, 5)), ("1..8", tuple(range(1, 9))), ("2..4,7", (2, 3, 4, 7)),
    (" 1 .. 2", None), ("0", (0,)), ("5,5,1..2", (5, 1, 2)),
])
def test_parse(text: str, expected: tuple[int, ...] | None) -> None:
    if expected is None:
        with pytest.raises(OodmlError):
            parse_int_list(text, "--k")
    else:
        assert parse_int_list(text, "--k") == expected


@pytest.mark.parametrize("text", ["x", "8..1", "", "1,,2", "1..", "-1", "1.5"])
def test_malformed_or_out_of_range(text: str) -> None:
    with pytest.raises(OodmlError) as e:
        parse_int_list(text, "--shifts", minimum=0 if text != "-1" else 0)
    assert "\n" not in str(e.value)


def test_all_only_where_allowed() -> None:
    assert parse_int_list("all", "--shifts", allow_all=True) is None
    with pytest.raises(OodmlError):
        parse_int_list("all", "--k")


def test_format_roundtrip() -> None:
    vals = (1, 2, 3, 5, 7, 8)
    assert format_int_list(vals) == "1..3,5,7..8"
    assert parse_int_list(format_int_list(vals), "--x") == vals
    assert format_int_list(None) == "all"
