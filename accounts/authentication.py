"""DRF authentication by `Authorization: Bearer <api key>`."""

from __future__ import annotations

from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from accounts.models import ApiKey, User
from accounts.rate_limits import rate_limit_check
from accounts.selectors import api_key_get_active
from accounts.services import api_key_mark_used


class ApiKeyAuthentication(BaseAuthentication):
    """Returns None when no bearer key is sent (other classes may try) and raises for a bad one:
    DRF treats any returned tuple as authenticated, so a failed check never returns one."""

    keyword = b"bearer"

    def authenticate(self, request: Request) -> tuple[User, ApiKey] | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword:
            return None
        if len(parts) != 2:
            raise AuthenticationFailed("Send the header as `Authorization: Bearer <api key>`, with one key.")
        try:
            secret = parts[1].decode("ascii")
        except UnicodeDecodeError as exc:
            raise AuthenticationFailed("The API key is not ASCII: copy it again from where it was created.") from exc
        key = api_key_get_active(secret=secret)
        if key is None:
            raise AuthenticationFailed(
                "Invalid, expired or revoked API key: create a new one with `python manage.py create_api_key`."
            )
        rate_limit_check(key)
        api_key_mark_used(key=key)
        return key.user, key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'
