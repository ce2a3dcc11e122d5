"""The OpenAPI schema generates without warnings and the docs page renders offline."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.test import Client


def test_schema_generates_without_warnings() -> None:
    out = io.StringIO()
    call_command("spectacular", "--validate", "--fail-on-warn", "--format", "openapi-json", stdout=out)
    assert '"/api/v1/teams/"' in out.getvalue()


@pytest.mark.django_db
def test_schema_and_docs_are_served_with_local_assets() -> None:
    client = Client()
    assert client.get("/api/schema/").status_code == 200
    docs = client.get("/api/docs/").content.decode()
    assert "swagger-ui" in docs
    assert "cdn.jsdelivr.net" not in docs
