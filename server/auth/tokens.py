"""Access tokens (short-lived JWTs) and refresh tokens (random, stored only as hashes)."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass

import jwt

from server.errors import InvalidToken
from server.settings import Settings

ALGORITHM = "HS256"
ACCESS_TYPE = "access"
DECODED_KEPT = 10_000  # access tokens whose signature was checked once, per process


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: int
    session_id: uuid.UUID
    expires_at: int


@dataclass(frozen=True, slots=True)
class RefreshToken:
    token: str
    token_hash: bytes


def hash_refresh_token(token: str) -> bytes:
    """Refresh tokens carry 256 random bits, so one SHA-256 is enough (no slow hash)."""
    return hashlib.sha256(token.encode()).digest()


class TokenIssuer:
    """Issues and checks tokens with one fixed algorithm and every registered claim."""

    def __init__(self, settings: Settings) -> None:
        if not settings.jwt_secret:
            raise ValueError("a JWT secret is required")
        self._secret = settings.jwt_secret
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self.access_ttl = settings.access_token_ttl
        self.refresh_ttl = settings.refresh_token_ttl
        self._decoded: dict[str, AccessClaims] = {}

    def issue_access(self, user_id: int, session_id: uuid.UUID) -> str:
        now = int(time.time())
        claims = {
            "sub": str(user_id),
            "sid": str(session_id),
            "typ": ACCESS_TYPE,
            "iss": self.issuer,
            "aud": self.audience,
            "iat": now,
            "exp": now + self.access_ttl,
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def decode_access(self, token: str) -> AccessClaims:
        """The claims of a valid access token; anything else is ``InvalidToken``.

        A token seen before is not verified again (the same bytes carry the same valid
        signature); only its expiry is, so an app's every request costs one dict lookup.
        """
        claims = self._decoded.get(token)
        if claims is None:
            claims = self._verify(token)
            if len(self._decoded) >= DECODED_KEPT:
                del self._decoded[next(iter(self._decoded))]  # the oldest
            self._decoded[token] = claims
        elif claims.expires_at <= time.time():  # as PyJWT judges "exp"
            del self._decoded[token]
            raise InvalidToken("access token expired")
        return claims

    def _verify(self, token: str) -> AccessClaims:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "iss", "aud", "sub", "typ", "sid"]},
            )
            if claims["typ"] != ACCESS_TYPE:
                raise InvalidToken("not an access token")
            return AccessClaims(int(claims["sub"]), uuid.UUID(claims["sid"]), int(claims["exp"]))
        except jwt.ExpiredSignatureError:
            raise InvalidToken("access token expired") from None
        except (jwt.InvalidTokenError, ValueError, TypeError):
            raise InvalidToken("access token invalid") from None

    @staticmethod
    def new_refresh() -> RefreshToken:
        token = secrets.token_urlsafe(32)
        return RefreshToken(token, hash_refresh_token(token))
