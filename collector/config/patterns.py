"""Regular expressions from the config, run by RE2: linear time in the text, whatever the pattern.

A `regex` condition runs on text any visitor sends; with a backtracking engine a pattern like
`^(a+)+$` on a few dozen characters blocks the process for seconds. RE2 never backtracks, so a
pattern it cannot run (backreferences, lookaround) is refused when the config is loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import re2

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # a refused pattern is reported with its path, not logged


def compile_pattern(pattern: str) -> Callable[[str], Any]:
    """The `search` of a compiled pattern; ValueError saying why when RE2 cannot run it."""
    try:
        return re2.compile(pattern, _OPTIONS).search  # type: ignore[no-any-return]
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(
            f"invalid regular expression: {reason} (patterns run in linear time: "
            "backreferences and lookaround are not available)"
        ) from None
