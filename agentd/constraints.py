"""Constraints on config values, declared once, on the field: `value: float = bounded(5.0, gt=0)`.

The config loader checks every section with `problems()` and turns the first
into an error naming the key and where it came from. Stdlib only: the settings
modules that use it are imported by the client-free parts of the daemon.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Final

_KEY: Final = "constraint"


@dataclass(frozen=True)
class Constraint:
    gt: float | None = None  # greater than
    ge: float | None = None  # at least
    le: float | None = None  # at most
    at_least: str | None = None  # at least another field of the same section
    one_of: tuple[str, ...] = ()
    nonblank: bool = False
    check: Callable[[Any], str | None] | None = None  # what is wrong, or None

    def problem(self, value: Any, section: object) -> str | None:
        """What is wrong with `value`, or None. None values (unset options) pass."""
        if value is None:
            return None
        if self.nonblank and not str(value).strip():
            return "must not be empty"
        if self.one_of and value not in self.one_of:
            return f"must be one of {', '.join(self.one_of)}, got {value!r}"
        if self.at_least is not None and value < getattr(section, self.at_least):
            return f"must be at least {self.at_least}"
        if self.check is not None:
            return self.check(value)
        return self._range(value)

    def _range(self, value: float) -> str | None:
        low_ok = (self.gt is None or value > self.gt) and (self.ge is None or value >= self.ge)
        if self.le is not None:
            if low_ok and value <= self.le:
                return None
            if self.gt is not None:
                return f"must be in ({_num(self.gt)}, {_num(self.le)}]"
            return f"must be between {_num(self.ge or 0)} and {_num(self.le)}"
        if self.gt is not None and value <= self.gt:
            return f"must be greater than {_num(self.gt)}"
        if self.ge is not None and value < self.ge:
            return "must not be negative" if self.ge == 0 else f"must be at least {_num(self.ge)}"
        return None


def bounded(default: Any, **constraint: Any) -> Any:
    """A dataclass field with a default and a constraint (see Constraint's fields)."""
    return field(default=default, metadata={_KEY: Constraint(**constraint)})


def problems(section: object) -> list[tuple[str, str]]:
    """(field, what is wrong) for every value of `section` that breaks its constraint."""
    out = []
    for f in fields(section):  # type: ignore[arg-type]
        constraint: Constraint | None = f.metadata.get(_KEY)
        if constraint is not None:
            problem = constraint.problem(getattr(section, f.name), section)
            if problem is not None:
                out.append((f.name, problem))
    return out


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
