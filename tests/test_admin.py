"""The admin console: every model's list, search and filters render for a superuser."""

from __future__ import annotations

import pytest
from django.contrib.admin.sites import site
from django.test import Client

from accounts.models import ApiKey
from accounts.services import api_key_create
from tests.conftest import member_of
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client_logged_in() -> Client:
    admin = UserFactory.create(is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(admin)
    return client


def test_every_registered_model_lists_searches_and_adds(admin_client_logged_in: Client, team) -> None:
    user = member_of(team)
    api_key_create(user=user, team=team, name="searchable")
    for model, model_admin in site._registry.items():
        base = f"/admin/{model._meta.app_label}/{model._meta.model_name}/"
        assert admin_client_logged_in.get(base).status_code == 200, base
        if model_admin.search_fields:
            assert admin_client_logged_in.get(base, {"q": "searchable"}).status_code == 200, base
        expected_add = 200 if model_admin.has_add_permission(_request_for(admin_client_logged_in)) else 403
        assert admin_client_logged_in.get(f"{base}add/").status_code == expected_add, base


def _request_for(client: Client):
    from django.test import RequestFactory

    request = RequestFactory().get("/admin/")
    request.user = UserFactory.create(is_staff=True, is_superuser=True)
    return request


def test_api_key_admin_never_shows_the_hash_and_revokes(admin_client_logged_in: Client, team) -> None:
    user = member_of(team)
    key, _secret = api_key_create(user=user, team=team, name="to-revoke")
    page = admin_client_logged_in.get(f"/admin/accounts/apikey/{key.pk}/change/").content.decode()
    assert key.key_hash not in page
    response = admin_client_logged_in.post(
        "/admin/accounts/apikey/", {"action": "revoke", "_selected_action": [key.pk]}, follow=True
    )
    assert response.status_code == 200
    assert ApiKey.objects.get(pk=key.pk).revoked_at is not None


def test_anonymous_is_sent_to_login() -> None:
    response = Client().get("/admin/")
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]
