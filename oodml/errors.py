"""User-facing errors: the CLI turns an `OodmlError` into one `error:` line on stderr and exit code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class OodmlError(Exception):
    """Bad input from the user (unknown name, malformed list, missing or corrupt file, missing dataset).

    The message must be one line that says what is wrong and how to fix it.
    """


def suggest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ' (did you mean a, b?)' for the closest `choices` to `name`, or '' when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else ""
