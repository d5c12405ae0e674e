"""Shared by the hardening tests: run the CLI as a user would and require one `error:` line with exit code 2."""

from __future__ import annotations

import pytest

from oodml.cli import main


def one_error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    """Run `oodml ARGS`; assert exit code 2 and exactly one `error: ` line on stderr (no traceback); return it."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]
