"""Access tokens that must not work: each is answered 401, next to a control that is 200.

The server accepts one algorithm (HS256) with one secret, and checks ``exp``, ``iat``,
``aud``, ``iss``, ``typ`` and the session; these are the classic ways around such checks.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from server.auth.tokens import TokenIssuer
from server.errors import InvalidToken
from server.settings import Settings
from tests.support import Account, Client, sign_up

ME = "/api/v1/me"
Claims = dict[str, Any]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unsigned(claims: Claims) -> str:
    """``alg: none``: a header, the claims, and an empty signature."""
    header = _b64(orjson.dumps({"alg": "none", "typ": "JWT"}))
    return f"{header}.{_b64(orjson.dumps(claims))}."


def rs256(claims: Claims) -> str:
    """Signed with a key pair of the attacker's own, naming an asymmetric algorithm."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(claims, key, algorithm="RS256")


def hs256_keyed_with_a_public_key(claims: Claims) -> str:
    """The RS256/HS256 confusion: an HMAC whose secret is a (public) PEM key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return _hmac(claims, pem.decode())


def _hmac(claims: Claims, secret: str, algorithm: str = "HS256") -> str:
    # PyJWT refuses PEM-looking HMAC secrets; sign by hand so the token really exists.
    import hashlib
    import hmac

    digest = {"HS256": hashlib.sha256, "HS512": hashlib.sha512}[algorithm]
    signing_input = (
        f"{_b64(orjson.dumps({'alg': algorithm, 'typ': 'JWT'}))}.{_b64(orjson.dumps(claims))}"
    )
    signature = hmac.new(secret.encode(), signing_input.encode(), digest).digest()
    return f"{signing_input}.{_b64(signature)}"


def good_claims(settings: Settings, account: Account) -> Claims:
    """The claims the server itself put into ``account``'s access token."""
    claims: Claims = jwt.decode(
        account.access_token,
        settings.jwt_secret,
        algorithms=["HS256"],
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
    )
    return claims


Forge = Callable[[Settings, Claims], str]


def _signed(settings: Settings, claims: Claims) -> str:
    return _hmac(claims, settings.jwt_secret)


def _changed(**changes: Any) -> Forge:
    def forge(settings: Settings, claims: Claims) -> str:
        now = int(time.time())
        values = {name: now + value if name in ("exp", "iat", "nbf") else value
                  for name, value in changes.items()}  # fmt: skip
        return _signed(settings, {**claims, **values})

    return forge


def _without(name: str) -> Forge:
    def forge(settings: Settings, claims: Claims) -> str:
        return _signed(settings, {key: value for key, value in claims.items() if key != name})

    return forge


FORGERIES: dict[str, Forge] = {
    "alg none": lambda settings, claims: unsigned(claims),
    "another key": lambda settings, claims: _hmac(claims, "not-the-server-secret-0123456789"),
    "another algorithm, right secret (HS512)": lambda settings, claims: _hmac(
        claims, settings.jwt_secret, "HS512"
    ),
    "RS256 with the attacker's key": lambda settings, claims: rs256(claims),
    "HS256 keyed with a public key": lambda settings, claims: hs256_keyed_with_a_public_key(claims),
    "signature stripped": lambda settings, claims: (
        _signed(settings, claims).rsplit(".", 1)[0] + "."
    ),
    "wrong aud": _changed(aud="another-api"),
    "wrong iss": _changed(iss="someone-else"),
    "wrong typ": _changed(typ="refresh"),
    "expired": _changed(exp=-120, iat=-1000),
    "not yet valid (nbf)": _changed(nbf=600),
    "issued in the future (iat)": _changed(iat=600, exp=1200),
    "no exp": _without("exp"),
    "no aud": _without("aud"),
    "no typ": _without("typ"),
    "no session": _without("sid"),
}


async def test_the_control_token_works(client: Client, settings: Settings) -> None:
    """A token signed the server's way with the same claims is accepted: the forgeries below
    fail for what was changed, nothing else."""
    account = await sign_up(client)
    token = _signed(settings, good_claims(settings, account))
    response = await client.get(ME, headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200, await response.text()


@pytest.mark.parametrize("forge", FORGERIES.values(), ids=FORGERIES.keys())
async def test_a_forged_or_stale_access_token_is_401(
    client: Client, settings: Settings, forge: Forge
) -> None:
    account = await sign_up(client)
    token = forge(settings, good_claims(settings, account))
    response = await client.get(ME, headers={"Authorization": f"Bearer {token}"})
    assert response.status == 401, await response.text()
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_a_refresh_token_is_no_access_token(client: Client) -> None:
    account = await sign_up(client)
    response = await client.get(ME, headers={"Authorization": f"Bearer {account.refresh_token}"})
    assert response.status == 401


async def test_an_access_token_is_no_refresh_token(client: Client) -> None:
    account = await sign_up(client)
    for path in ("/api/v1/auth/refresh", "/api/v1/auth/logout"):
        response = await client.post(path, json={"refresh_token": account.access_token})
        assert response.status == 401, (path, await response.text())
    assert (await client.get(ME, headers=account.auth)).status == 200  # nothing was revoked


async def test_a_logged_out_session_is_401(client: Client) -> None:
    account = await sign_up(client)
    logout = await client.post("/api/v1/auth/logout", json={"refresh_token": account.refresh_token})
    assert logout.status == 204
    assert (await client.get(ME, headers=account.auth)).status == 401
    again = await client.post("/api/v1/auth/refresh", json={"refresh_token": account.refresh_token})
    assert again.status == 401


async def test_a_revoked_family_is_401_for_every_token_of_it(client: Client) -> None:
    """A rotated refresh token used again (stolen) revokes the whole family."""
    account = await sign_up(client)
    body = {"refresh_token": account.refresh_token}
    rotated = await client.post("/api/v1/auth/refresh", json=body)
    assert rotated.status == 200
    newest = await rotated.json()
    assert (await client.post("/api/v1/auth/refresh", json=body)).status == 401  # reuse
    for token in (account.access_token, newest["access_token"]):
        response = await client.get(ME, headers={"Authorization": f"Bearer {token}"})
        assert response.status == 401
    refresh = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": newest["refresh_token"]}
    )
    assert refresh.status == 401


def test_a_token_accepted_before_still_expires_on_time(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tokens seen before are not verified again; their expiry is checked every time, and
    a tampered copy of a known token is verified afresh."""
    issuer = TokenIssuer(settings)
    session_id = uuid.uuid4()
    token = issuer.issue_access(7, session_id)
    assert issuer.decode_access(token).user_id == 7
    assert issuer.decode_access(token).session_id == session_id  # the kept claims
    header, payload, signature = token.split(".")
    with pytest.raises(InvalidToken):
        issuer.decode_access(f"{header}.{payload}.{signature[:-2]}AA")
    later = time.time() + settings.access_token_ttl
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(InvalidToken, match="expired"):
        issuer.decode_access(token)
