"""Request and response bodies of the account endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import pydantic
from pydantic import AfterValidator, Field, StringConstraints

from server.jsonio import StrictModel
from server.text import NOT_BLANK, STRIP, WHITESPACE

# Deliberately loose: one @, no whitespace (nor U+0000), a dot in the domain.
# Deliverability is the mail server's business, not a regular expression's.
_EMAIL_PART = rf"[^@\x00{WHITESPACE}]+"
EMAIL_PATTERN = rf"^{_EMAIL_PART}@{_EMAIL_PART}\.{_EMAIL_PART}$"
REGION_PATTERN = r"^[a-z][a-z0-9-]{1,39}$"
MAX_EMAIL_LENGTH = 254


def _fits_once_lowered(email: str) -> str:
    """Emails are stored lower-cased, and lower-casing can lengthen one ("İ" -> "i̇")."""
    if len(email.lower()) > MAX_EMAIL_LENGTH:
        raise ValueError(f"longer than {MAX_EMAIL_LENGTH} characters once lower-cased")
    return email


Email = Annotated[
    str,
    StringConstraints(max_length=MAX_EMAIL_LENGTH, pattern=EMAIL_PATTERN),
    AfterValidator(_fits_once_lowered),
    Field(description=f"At most {MAX_EMAIL_LENGTH} characters, also once lower-cased"),
]
Password = Annotated[str, StringConstraints(min_length=8, max_length=128)]
Nickname = Annotated[str, StringConstraints(min_length=1, max_length=30, pattern=NOT_BLANK), STRIP]
Region = Annotated[str, StringConstraints(pattern=REGION_PATTERN)]
# Refresh tokens are 43 characters; the bound is loose enough that any token a client could
# mix up with one (an access token, say) is looked up and refused with 401, not 422.
OpaqueToken = Annotated[str, StringConstraints(min_length=1, max_length=2048)]


class SignupBody(StrictModel):
    email: Email
    password: Password
    nickname: Nickname
    region: Region


class LoginBody(StrictModel):
    email: Annotated[str, StringConstraints(min_length=1, max_length=254)]
    # Long enough for any real password, short enough that hashing it costs nothing extra.
    password: Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class RefreshBody(StrictModel):
    refresh_token: OpaqueToken


class UserOut(pydantic.BaseModel):
    id: int
    email: str
    nickname: str
    region: str
    created_at: datetime


class TokenPairOut(pydantic.BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - a scheme name
    expires_in: int


class SignupOut(TokenPairOut):
    user: UserOut
