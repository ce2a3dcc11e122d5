"""Personal data out of training text: e-mail addresses, phone numbers, ID numbers (Chinese
resident ID with its checksum, US SSN, payment cards by Luhn) and API keys and secrets become
placeholders (`<EMAIL>`, `<PHONE>`, `<ID_NUMBER>`, `<SECRET>`), counted per kind.

Order matters: secrets first (a key may hold digits and an `@`), then e-mail, then the ID numbers
(an 18-digit resident ID must not be read as a card, a card as phone numbers), phones last.
Digit runs are bounded by "not a digit" rather than `\\b`: in Chinese text `号13812345678` has no
word boundary before the number. Over-scrubbing (a 16-digit order number that passes Luhn) is the
accepted error; what the patterns miss is what the tests pin down."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

EMAIL = "email"
PHONE = "phone"
ID_NUMBER = "id_number"
SECRET = "secret"  # noqa: S105 (the name of a kind, not a password)
KINDS = (EMAIL, PHONE, ID_NUMBER, SECRET)
PLACEHOLDERS = {EMAIL: "<EMAIL>", PHONE: "<PHONE>", ID_NUMBER: "<ID_NUMBER>", SECRET: "<SECRET>"}

# Each pattern starts with what it consumes (a literal, a character class) and checks the character
# before it after that (`[0-9](?<![0-9]{2})`: a digit with no digit before it), so that the regex
# engine can skip ahead to where a match may start: about five times faster on long answers.
_SECRET_TOKENS = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"
    r"|sk-(?<![A-Za-z0-9]sk-)(?:proj-|ant-)?[A-Za-z0-9_-]{16,}"  # OpenAI, Anthropic and compatible keys
    r"|[spr]k_(?<![A-Za-z0-9][spr]k_)(?:live|test)_[A-Za-z0-9]{16,}"  # Stripe
    r"|A[KS]IA(?<![A-Za-z0-9]A[KS]IA)[0-9A-Z]{16}(?![0-9A-Z])"  # AWS access key ids
    r"|gh[pousr]_(?<![A-Za-z0-9]gh[pousr]_)[A-Za-z0-9]{30,}"  # GitHub tokens
    r"|github_pat_[A-Za-z0-9_]{22,}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}"  # Slack
    r"|AIza[0-9A-Za-z_-]{35}"  # Google API keys
    r"|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # JWTs
)
_SECRET_MARKERS = (
    "-----BEGIN",
    "sk-",
    "k_live_",
    "k_test_",
    "AKIA",
    "ASIA",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "xox",
    "AIza",
    "eyJ",
)
# `Authorization: Bearer <token>`: the word stays, the token goes.
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{12,}")
# `password=hunter2`, `api_key: "..."`, `密码:abc123` (colons full-width too): the name stays, the value goes.
_SECRET_NAMES = (
    "password",
    "passwd",
    "pwd",
    "passphrase",
    "secret",
    "api_key",
    "api-key",
    "apikey",
    "access_token",
    "access-token",
    "auth_token",
    "auth-token",
    "refresh_token",
    "private_key",
    "private-key",
    "密码",
    "口令",
    "密钥",
    "令牌",
)
_ASSIGNED_SECRET = re.compile(
    r"((?:" + "|".join(re.escape(name) for name in _SECRET_NAMES) + r")\s*(?:=|:|：|是|为)\s*)"
    r"(\"[^\"\n]{1,200}\"|'[^'\n]{1,200}'|[^\s,;，。；、\"'<>]{1,200})",
    re.IGNORECASE,
)
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# 6-digit region, birth date, 3-digit sequence, check character (validated below).
_CN_RESIDENT_ID = re.compile(
    r"[1-9](?<![0-9A-Za-z][1-9])\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[0-9Xx]"
    r"(?![0-9A-Za-z])"
)
_US_SSN = re.compile(r"[0-9](?<![0-9-][0-9])\d{2}([- ])\d{2}\1\d{4}(?![\d-])")
# 13 to 19 digits, bare or in groups of four (Amex: 4-6-5) with spaces or dashes; Luhn decides.
_CARD = re.compile(r"[0-9](?<![0-9-][0-9])(?:\d{3}([ -]?)\d{4}\1\d{4}\1\d{1,7}|\d{3}([ -]?)\d{6}\2\d{5})(?![0-9])")
_PHONE_PATTERNS = (
    # Chinese mobiles: with the country code (+86, 0086), then bare; either as 11 digits or 3-4-4.
    re.compile(r"(?:\+|00)86[ -]?1[3-9]\d(?:\d{8}|[ -]\d{4}[ -]\d{4})(?![0-9])"),
    re.compile(r"1(?<![0-9+]1)[3-9]\d(?:\d{8}|[ -]\d{4}[ -]\d{4})(?![0-9])"),
    # International: + (or 00) and the country code, then groups.
    re.compile(r"(?:\+|00(?<![0-9]00))[1-9]\d{0,2}(?:[ .-]?\(?\d{1,4}\)?){2,5}(?![0-9])"),
    # North American: (415) 555-0132, 415-555-0132, 415.555.0132.
    re.compile(r"(?:\(\d{3}\)\s?|[0-9](?<![0-9]{2})\d{2}[-.])\d{3}[-.]\d{4}(?![0-9])"),
    # Chinese landlines: 010-12345678, 0755-1234567.
    re.compile(r"0(?<![0-9-]0)\d{2,3}-\d{7,8}(?![0-9])"),
)
# Text with no run of digits (allowing separators) holds no ID or phone number to look for.
_DIGIT_RUN = re.compile(r"[0-9][0-9 ()+.-]{5,}[0-9]")
_CN_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CN_ID_CHECK = "10X98765432"


def resident_id_valid(number: str) -> bool:
    """The GB 11643 check character of an 18-character Chinese resident ID."""
    total = sum(int(digit) * weight for digit, weight in zip(number[:17], _CN_ID_WEIGHTS, strict=True))
    return _CN_ID_CHECK[total % 11] == number[17].upper()


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, character in enumerate(reversed(digits)):
        value = int(character)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


@dataclass
class ScrubCounts:
    """Replacements made, per kind, over every text scrubbed with it."""

    counts: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, int]:
        return {kind: self.counts.get(kind, 0) for kind in KINDS}


def _replace(pattern: re.Pattern[str], kind: str, text: str, counts: Counter[str], keep: int = 0) -> str:
    """Every match of `pattern` becomes the kind's placeholder; `keep` keeps that group (a
    `password=` before the value)."""

    def substitute(match: re.Match[str]) -> str:
        counts[kind] += 1
        return (match.group(keep) if keep else "") + PLACEHOLDERS[kind]

    return pattern.sub(substitute, text)


def _replace_checked(
    pattern: re.Pattern[str], kind: str, text: str, counts: Counter[str], check: Callable[[str], bool]
) -> str:
    def substitute(match: re.Match[str]) -> str:
        if not check(match.group(0)):
            return match.group(0)
        counts[kind] += 1
        return PLACEHOLDERS[kind]

    return pattern.sub(substitute, text)


def _social_security_number(candidate: str) -> bool:
    """Never issued: area 000, 666 or 900-999, group 00, serial 0000."""
    area, group, serial = re.split(r"[- ]", candidate)
    return area not in ("000", "666") and not area.startswith("9") and group != "00" and serial != "0000"


def _card_number(candidate: str) -> bool:
    digits = re.sub(r"[ -]", "", candidate)
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _phone_number(candidate: str) -> bool:
    return 7 <= sum(character.isdigit() for character in candidate) <= 15


def scrub(text: str, counts: ScrubCounts) -> str:
    """`text` with personal data and secrets replaced; `counts` gains what was replaced. Each
    family of patterns runs only when a cheap look (a substring, a digit run) says it may match."""
    if not text:
        return text
    tally = counts.counts
    if any(marker in text for marker in _SECRET_MARKERS):
        text = _replace(_SECRET_TOKENS, SECRET, text, tally)
    lowered = text.lower()
    if "bearer" in lowered:
        text = _replace(_BEARER, SECRET, text, tally, keep=1)
    if any(name in lowered for name in _SECRET_NAMES):
        text = _replace(_ASSIGNED_SECRET, SECRET, text, tally, keep=1)
    if "@" in text:
        text = _replace(_EMAIL, EMAIL, text, tally)
    if _DIGIT_RUN.search(text) is None:
        return text
    text = _replace_checked(_CN_RESIDENT_ID, ID_NUMBER, text, tally, resident_id_valid)
    text = _replace_checked(_US_SSN, ID_NUMBER, text, tally, _social_security_number)
    text = _replace_checked(_CARD, ID_NUMBER, text, tally, _card_number)
    for pattern in _PHONE_PATTERNS:
        text = _replace_checked(pattern, PHONE, text, tally, _phone_number)
    return text
