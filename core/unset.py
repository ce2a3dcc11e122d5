"""The value of a service's keyword argument that the caller did not give. Updates take only what
is given, and None can be a value to set (an optional reference cleared), so None cannot mean
"not given"."""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T")


class Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET = Unset()


def given(**values: Any) -> dict[str, Any]:
    """The keyword arguments that were given, by name."""
    return {name: value for name, value in values.items() if not isinstance(value, Unset)}
