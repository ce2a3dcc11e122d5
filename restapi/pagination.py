"""Cursor pagination for every list: stable under inserts, and an index scan on the primary key."""

from typing import Any

from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request


class IdCursorPagination(CursorPagination):
    ordering = "-pk"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200

    def decode_cursor(self, request: Request) -> Any:
        # A cursor the client mangled is a bad request, not a missing page.
        try:
            return super().decode_cursor(request)
        except NotFound as exc:
            raise ValidationError({"cursor": "Invalid cursor: use the `next` or `previous` link of a page."}) from exc
