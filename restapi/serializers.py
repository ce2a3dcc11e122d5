"""Input serializers refuse fields they do not know, so that a typo (`top-k`, `scope`) is a 400
that names it instead of a silently ignored setting. Read-only fields are known: a client may
send back what it read."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rest_framework import serializers


class StrictFieldsMixin:
    fields: Any

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            unknown = sorted(str(name) for name in data if name not in self.fields)
            if unknown:
                raise serializers.ValidationError(
                    {name: "Unknown field: remove it (the fields are listed at /api/docs/)." for name in unknown}
                )
        return super().to_internal_value(data)  # type: ignore[misc]


def validated(serializer_class: type[serializers.Serializer], data: Any) -> dict[str, Any]:
    """A request body checked by `serializer_class` (a 400 naming each bad field), as a dict."""
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)
