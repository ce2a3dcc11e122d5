"""Provider credentials encrypted at rest (Fernet, with a key derived from SECRET_KEY).

Rotating SECRET_KEY makes stored credentials unreadable; they must then be entered again, and
the error says so.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings

from core.domain_errors import DomainError


class CredentialsUnreadable(DomainError):
    code = "credentials_unreadable"


def _fernet() -> Fernet:
    digest = hashlib.sha256(b"chatplatform-provider-credentials:" + settings.SECRET_KEY.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def credentials_encrypt(secret: str) -> str:
    return _fernet().encrypt(secret.encode()).decode() if secret else ""


def credentials_decrypt(token: str) -> str:
    if not token:
        return ""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise CredentialsUnreadable(
            "the stored provider credentials cannot be decrypted (was SECRET_KEY changed?): enter the API key again"
        ) from exc
