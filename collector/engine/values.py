"""What the engine's values are: JSON values, and the MISSING sentinel for absent ones."""

from __future__ import annotations

import enum
from typing import Any, Final, Literal, TypeAlias

# A value read from an event, a profile or the config: whatever JSON decodes to (None, bool,
# int, float, str, list, dict). The hot path checks it by class (`value.__class__ is str` is
# cheaper than `type(value) is str` on CPython 3.11, but mypy narrows only the latter), so it
# is Any under a name that says what it holds.
Value: TypeAlias = Any


class Missing(enum.Enum):
    """The value of something that is not there (a trait never set, a variable with no data).

    A one-member enum, so that `value is MISSING` narrows under mypy. Its value is a bare
    object so that encoding it by mistake fails loudly instead of writing something.
    """

    MISSING = object()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> Literal[False]:
        return False


MISSING: Final = Missing.MISSING


class Unset(enum.Enum):
    """"Not looked up yet", for memos where MISSING is itself a value worth remembering."""

    UNSET = object()

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = Unset.UNSET
