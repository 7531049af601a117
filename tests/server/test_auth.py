"""Accounts: sign-up, login, access tokens, refresh rotation and reuse, logout, rate limits."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import argon2
import asyncpg
import jwt
import pytest
import redis.asyncio as aioredis
from aiohttp import ClientResponse
from jwt.warnings import InsecureKeyLengthWarning

from jangteo.app import create_app
from server import keys
from server.auth.passwords import PasswordHasher
from server.auth.tokens import TokenIssuer, hash_refresh_token
from server.errors import PROBLEM_CONTENT_TYPE
from server.settings import RateLimit, Settings
from tests.support import PASSWORD, TEST_JWT_SECRET, Account, Client, sign_up

ClientFactory = Callable[[Settings], Awaitable[Client]]

SIGNUP = "/api/v1/auth/signup"
LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"
LOGOUT = "/api/v1/auth/logout"
ME = "/api/v1/me"


def new_email() -> str:
    return f"user-{uuid.uuid4().hex[:12]}@example.com"


def signup_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "email": new_email(),
        "password": PASSWORD,
        "nickname": "tester",
        "region": "seoul-mapo",
    }
    body.update(changes)
    return body


async def problem(response: ClientResponse, status: int, slug: str | None = None) -> dict[str, Any]:
    """Check ``response`` is an RFC 9457 problem with ``status`` (and type slug); return it."""
    assert response.status == status, await response.text()
    assert response.content_type == PROBLEM_CONTENT_TYPE
    body: dict[str, Any] = await response.json(content_type=None)
    assert body["status"] == status
    assert isinstance(body["title"], str)
    assert body["title"]
    assert body["type"].startswith("https://")
    if slug is not None:
        assert body["type"].endswith("/" + slug), body
    return body


async def assert_unauthorized(response: ClientResponse) -> dict[str, Any]:
    body = await problem(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    return body


async def login(client: Client, email: str, password: str = PASSWORD) -> ClientResponse:
    return await client.post(LOGIN, json={"email": email, "password": password})


async def login_ok(client: Client, account: Account) -> dict[str, Any]:
    response = await login(client, account.email)
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def refresh(client: Client, token: str) -> ClientResponse:
    return await client.post(REFRESH, json={"refresh_token": token})


async def me(client: Client, access_token: str) -> ClientResponse:
    return await client.get(ME, headers={"Authorization": f"Bearer {access_token}"})


async def user_count(db: asyncpg.Connection) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM users")
    return count


def claims_for(user_id: int, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": str(user_id),
        "sid": str(uuid.uuid4()),
        "typ": "access",
        "iss": "jangteo",
        "aud": "jangteo-api",
        "iat": now,
        "exp": now + 600,
    }
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


# --- sign-up -----------------------------------------------------------------------------


async def test_signup_returns_user_and_token_pair(client: Client, db: asyncpg.Connection) -> None:
    body = signup_body(email="Mixed.Case@Example.COM", nickname="  Kim  ")
    response = await client.post(SIGNUP, json=body)
    assert response.status == 201, await response.text()
    assert response.content_type == "application/json"
    out = await response.json()
    assert set(out) == {"user", "access_token", "refresh_token", "token_type", "expires_in"}
    assert out["token_type"] == "Bearer"
    assert out["expires_in"] == 900
    assert isinstance(out["access_token"], str)
    assert isinstance(out["refresh_token"], str)
    assert out["access_token"] != out["refresh_token"]
    user = out["user"]
    assert set(user) == {"id", "email", "nickname", "region", "created_at"}
    assert user["email"] == "mixed.case@example.com"
    assert user["nickname"] == "Kim"
    assert user["region"] == "seoul-mapo"
    assert isinstance(user["id"], int)

    row = await db.fetchrow(
        "SELECT email, password_hash, nickname FROM users WHERE id = $1", user["id"]
    )
    assert row is not None
    assert row["email"] == "mixed.case@example.com"
    assert row["nickname"] == "Kim"
    assert row["password_hash"].startswith("$argon2id$")
    assert PASSWORD not in row["password_hash"]
    assert argon2.PasswordHasher().verify(row["password_hash"], PASSWORD)


async def test_signup_tokens_work_and_refresh_token_is_stored_only_hashed(
    client: Client, db: asyncpg.Connection
) -> None:
    account = await sign_up(client)
    response = await me(client, account.access_token)
    assert response.status == 200
    assert (await response.json())["id"] == account.user_id

    rows = await db.fetch(
        "SELECT token_hash FROM refresh_tokens WHERE user_id = $1", account.user_id
    )
    assert [bytes(row["token_hash"]) for row in rows] == [hash_refresh_token(account.refresh_token)]
    plain = await db.fetchval(
        "SELECT count(*) FROM refresh_tokens WHERE position($1::bytea in token_hash) > 0",
        account.refresh_token.encode(),
    )
    assert plain == 0


async def test_signup_duplicate_email_in_other_case_is_409(
    client: Client, db: asyncpg.Connection
) -> None:
    email = new_email()
    await sign_up(client, email=email)
    response = await client.post(SIGNUP, json=signup_body(email=email.upper()))
    body = await problem(response, 409, "email-taken")
    assert "access_token" not in body
    assert await user_count(db) == 1


async def test_signup_concurrent_same_email_creates_one_account(
    client: Client, db: asyncpg.Connection
) -> None:
    email = new_email()
    responses = await asyncio.gather(
        *(client.post(SIGNUP, json=signup_body(email=email)) for _ in range(5))
    )
    statuses = sorted(response.status for response in responses)
    assert statuses == [201, 409, 409, 409, 409]
    assert await user_count(db) == 1


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"email": "not-an-email"}, "email"),
        ({"email": "two@@example.com"}, "email"),
        ({"email": "spa ce@example.com"}, "email"),
        ({"email": ""}, "email"),
        ({"password": "short12"}, "password"),
        ({"password": "x" * 129}, "password"),
        ({"password": 12345678}, "password"),
        ({"nickname": ""}, "nickname"),
        ({"nickname": "   "}, "nickname"),
        ({"nickname": "n" * 31}, "nickname"),
        ({"region": "Seoul"}, "region"),
        ({"region": "seoul mapo"}, "region"),
        ({"region": "s"}, "region"),
        ({"region": "1seoul"}, "region"),
        ({"region": 7}, "region"),
        ({"is_admin": True}, "is_admin"),
        ({"id": 1}, "id"),
    ],
)
async def test_signup_validation_errors_name_the_field(
    client: Client, db: asyncpg.Connection, changes: dict[str, Any], field: str
) -> None:
    response = await client.post(SIGNUP, json=signup_body(**changes))
    body = await problem(response, 422, "validation-failed")
    assert [error["field"] for error in body["errors"]] == [field]
    assert all(error["message"] and error["code"] for error in body["errors"])
    assert await user_count(db) == 0


async def test_signup_boundary_lengths_are_accepted(client: Client) -> None:
    shortest = await client.post(SIGNUP, json=signup_body(password="x" * 8, nickname="n"))
    assert shortest.status == 201, await shortest.text()
    longest = await client.post(SIGNUP, json=signup_body(password="x" * 128, nickname="n" * 30))
    assert longest.status == 201, await longest.text()


async def test_signup_reports_every_bad_field_at_once(
    client: Client, db: asyncpg.Connection
) -> None:
    response = await client.post(
        SIGNUP,
        json={"email": "nope", "password": 1, "nickname": "", "region": "X", "role": "admin"},
    )
    body = await problem(response, 422, "validation-failed")
    fields = sorted(error["field"] for error in body["errors"])
    assert fields == ["email", "nickname", "password", "region", "role"]
    assert await user_count(db) == 0


async def test_signup_missing_fields_are_listed(client: Client, db: asyncpg.Connection) -> None:
    response = await client.post(SIGNUP, json={"email": new_email()})
    body = await problem(response, 422, "validation-failed")
    assert sorted(error["field"] for error in body["errors"]) == ["nickname", "password", "region"]
    assert await user_count(db) == 0


# --- login -------------------------------------------------------------------------------


async def test_login_returns_a_token_pair(client: Client) -> None:
    account = await sign_up(client)
    response = await login(client, account.email.upper())
    assert response.status == 200, await response.text()
    body = await response.json()
    assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    assert body["refresh_token"] != account.refresh_token
    answer = await me(client, body["access_token"])
    assert answer.status == 200
    assert (await answer.json())["email"] == account.email


@pytest.mark.parametrize(
    "email", ["İstanbul@example.com", "ÄBC@Example.com", "\u212aelvin@example.com"]
)
async def test_login_with_the_exact_sign_up_email_works_for_non_ascii(
    client: Client, email: str
) -> None:
    """Python's and PostgreSQL's lower() differ for "İ"; sign-up and login must agree."""
    response = await client.post(SIGNUP, json=signup_body(email=email))
    assert response.status == 201, await response.text()
    assert (await response.json())["user"]["email"] == email.lower()
    for variant in (email, email.lower()):
        answer = await login(client, variant)
        assert answer.status == 200, (variant, await answer.text())
    duplicate = await client.post(SIGNUP, json=signup_body(email=email.lower()))
    await problem(duplicate, 409, "email-taken")


async def test_wrong_password_and_unknown_email_answer_the_same(client: Client) -> None:
    account = await sign_up(client)
    wrong = await login(client, account.email, "wrong password!")
    unknown = await login(client, new_email(), "wrong password!")
    wrong_body = await assert_unauthorized(wrong)
    unknown_body = await assert_unauthorized(unknown)
    assert wrong.status == unknown.status == 401
    assert wrong.headers["WWW-Authenticate"] == unknown.headers["WWW-Authenticate"]
    assert wrong_body == unknown_body
    assert wrong_body["type"].endswith("/invalid-credentials")
    assert "access_token" not in wrong_body


async def test_login_validation_is_422(client: Client) -> None:
    response = await client.post(LOGIN, json={"email": new_email()})
    body = await problem(response, 422, "validation-failed")
    assert [error["field"] for error in body["errors"]] == ["password"]
    response = await client.post(LOGIN, json={"email": new_email(), "password": 12345678})
    body = await problem(response, 422, "validation-failed")
    assert [error["field"] for error in body["errors"]] == ["password"]


async def test_unknown_email_still_verifies_a_password(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unknown-email path must do the same argon2 work as a wrong password."""
    account = await sign_up(client)
    hasher: PasswordHasher = client.app[keys.password_hasher_key]
    spy = SpyArgon(hasher._hasher)
    monkeypatch.setattr(hasher, "_hasher", spy)
    verified = spy.verified

    assert (await login(client, new_email(), "some password")).status == 401
    assert len(verified) == 1
    dummy = verified[0]
    assert dummy.startswith("$argon2id$")

    assert (await login(client, account.email, "some password")).status == 401
    assert len(verified) == 2
    real = verified[1]
    assert real.startswith("$argon2id$")
    # Same algorithm and the same cost parameters: only the salt and digest differ.
    assert dummy.rsplit("$", 2)[0] == real.rsplit("$", 2)[0]


class SpyArgon:
    """Stands in for ``argon2.PasswordHasher`` and records every hash it verifies against."""

    def __init__(self, real: argon2.PasswordHasher) -> None:
        self.real = real
        self.verified: list[str] = []

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.verified.append(hash if isinstance(hash, str) else hash.decode())
        return self.real.verify(hash, password)


# --- access tokens -----------------------------------------------------------------------


async def test_me_returns_the_user(client: Client) -> None:
    account = await sign_up(client)
    response = await client.get(ME, headers=account.auth)
    assert response.status == 200
    body = await response.json()
    assert body["id"] == account.user_id
    assert body["email"] == account.email
    assert "password_hash" not in body
    assert "password" not in body


async def test_access_token_claims(client: Client) -> None:
    account = await sign_up(client)
    header = jwt.get_unverified_header(account.access_token)
    assert header["alg"] == "HS256"
    claims = jwt.decode(
        account.access_token, TEST_JWT_SECRET, algorithms=["HS256"], audience="jangteo-api"
    )
    assert claims["sub"] == str(account.user_id)
    assert claims["typ"] == "access"
    assert claims["iss"] == "jangteo"
    assert claims["exp"] - claims["iat"] == 900
    uuid.UUID(claims["sid"])


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer garbage",
        "Bearer a.b.c",
        "Basic dXNlcjpwYXNz",
        "Token abc",
    ],
)
async def test_me_without_a_valid_header_is_401(client: Client, header: str | None) -> None:
    await sign_up(client)
    headers = {} if header is None else {"Authorization": header}
    response = await client.get(ME, headers=headers)
    body = await assert_unauthorized(response)
    assert body["type"].endswith("/invalid-token")


@pytest.mark.parametrize(
    ("secret", "algorithm", "changes"),
    [
        ("another-secret-0123456789abcdef0123456789", "HS256", {}),
        (TEST_JWT_SECRET, "HS512", {}),
        (TEST_JWT_SECRET, "HS256", {"aud": "someone-else"}),
        (TEST_JWT_SECRET, "HS256", {"iss": "evil"}),
        (TEST_JWT_SECRET, "HS256", {"typ": "refresh"}),
        (TEST_JWT_SECRET, "HS256", {"typ": None}),
        (TEST_JWT_SECRET, "HS256", {"sid": None}),
        (TEST_JWT_SECRET, "HS256", {"sid": "not-a-uuid"}),
        (TEST_JWT_SECRET, "HS256", {"iat": None}),
        (TEST_JWT_SECRET, "HS256", {"exp": None}),
        (TEST_JWT_SECRET, "HS256", {"aud": None}),
        (TEST_JWT_SECRET, "HS256", {"iss": None}),
        (TEST_JWT_SECRET, "HS256", {"sub": "not-a-number"}),
        (TEST_JWT_SECRET, "HS256", {"exp": int(time.time()) - 10}),
    ],
    ids=[
        "other-secret",
        "other-algorithm",
        "wrong-aud",
        "wrong-iss",
        "refresh-typ",
        "no-typ",
        "no-sid",
        "bad-sid",
        "no-iat",
        "no-exp",
        "no-aud",
        "no-iss",
        "bad-sub",
        "expired",
    ],
)
async def test_me_rejects_forged_or_incomplete_tokens(
    client: Client, secret: str, algorithm: str, changes: dict[str, Any]
) -> None:
    account = await sign_up(client)
    with warnings.catch_warnings():
        # PyJWT warns that this test secret is short for HS512; the server must refuse it anyway.
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        token = jwt.encode(claims_for(account.user_id, **changes), secret, algorithm=algorithm)
    await assert_unauthorized(await me(client, token))


async def test_control_a_crafted_token_with_the_right_secret_is_accepted(client: Client) -> None:
    """The forged-token cases above differ from this accepted token in one thing only."""
    account = await sign_up(client)
    token = jwt.encode(claims_for(account.user_id), TEST_JWT_SECRET, algorithm="HS256")
    response = await me(client, token)
    assert response.status == 200
    assert (await response.json())["id"] == account.user_id


async def test_me_rejects_alg_none(client: Client) -> None:
    account = await sign_up(client)
    token = jwt.encode(claims_for(account.user_id), "", algorithm="none")
    assert jwt.get_unverified_header(token)["alg"] == "none"
    await assert_unauthorized(await me(client, token))
    # Also the hand-made variant with an empty signature after a signed body.
    header, payload, _ = account.access_token.split(".")
    none_header = jwt.utils.base64url_encode(b'{"alg":"none","typ":"JWT"}').decode()
    await assert_unauthorized(await me(client, f"{none_header}.{payload}."))
    await assert_unauthorized(await me(client, f"{header}.{payload}."))


async def test_me_rejects_expired_token_from_the_issuer(client: Client, settings: Settings) -> None:
    account = await sign_up(client)
    issuer = TokenIssuer(settings.replace(access_token_ttl=-10))
    token = issuer.issue_access(account.user_id, uuid.uuid4())
    body = await assert_unauthorized(await me(client, token))
    assert "expired" in body["detail"]


async def test_me_rejects_refresh_token_as_bearer(client: Client) -> None:
    account = await sign_up(client)
    await assert_unauthorized(await me(client, account.refresh_token))


async def test_me_rejects_token_of_deleted_account(client: Client, db: asyncpg.Connection) -> None:
    account = await sign_up(client)
    await db.execute("DELETE FROM users WHERE id = $1", account.user_id)
    await assert_unauthorized(await me(client, account.access_token))


# --- refresh -----------------------------------------------------------------------------


async def test_refresh_rotates_the_pair(client: Client, db: asyncpg.Connection) -> None:
    account = await sign_up(client)
    response = await refresh(client, account.refresh_token)
    assert response.status == 200, await response.text()
    pair = await response.json()
    assert set(pair) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert pair["refresh_token"] != account.refresh_token
    assert (await me(client, pair["access_token"])).status == 200
    # Same session (family) as before.
    old_sid = jwt.decode(account.access_token, options={"verify_signature": False})["sid"]
    new_sid = jwt.decode(pair["access_token"], options={"verify_signature": False})["sid"]
    assert old_sid == new_sid
    rotated = await db.fetchval(
        "SELECT rotated_at IS NOT NULL FROM refresh_tokens WHERE token_hash = $1",
        hash_refresh_token(account.refresh_token),
    )
    assert rotated is True
    # The new refresh token rotates in turn.
    again = await refresh(client, pair["refresh_token"])
    assert again.status == 200, await again.text()


async def test_reusing_a_rotated_refresh_token_revokes_the_family(
    client: Client, db: asyncpg.Connection
) -> None:
    account = await sign_up(client)
    first = await (await refresh(client, account.refresh_token)).json()
    second = await (await refresh(client, first["refresh_token"])).json()
    assert (await me(client, second["access_token"])).status == 200

    # An attacker (or a stale client) presents the first, already rotated token.
    reuse = await refresh(client, account.refresh_token)
    body = await assert_unauthorized(reuse)
    assert body["type"].endswith("/invalid-token")

    # The newest token of the family is dead too, and so is the session's access token.
    await assert_unauthorized(await refresh(client, second["refresh_token"]))
    await assert_unauthorized(await me(client, second["access_token"]))
    await assert_unauthorized(await me(client, account.access_token))
    unrevoked = await db.fetchval(
        "SELECT count(*) FROM refresh_tokens WHERE user_id = $1 AND revoked_at IS NULL",
        account.user_id,
    )
    assert unrevoked == 0


async def test_reuse_revokes_only_that_session(client: Client) -> None:
    account = await sign_up(client)
    other = await login_ok(client, account)
    await refresh(client, account.refresh_token)
    await assert_unauthorized(await refresh(client, account.refresh_token))
    # The second session of the same user is untouched.
    assert (await me(client, other["access_token"])).status == 200
    assert (await refresh(client, other["refresh_token"])).status == 200


async def test_expired_refresh_token_is_401(client: Client, db: asyncpg.Connection) -> None:
    account = await sign_up(client)
    updated = await db.execute(
        "UPDATE refresh_tokens SET expires_at = now() - interval '1 second' WHERE token_hash = $1",
        hash_refresh_token(account.refresh_token),
    )
    assert updated == "UPDATE 1"
    await assert_unauthorized(await refresh(client, account.refresh_token))
    count = await db.fetchval(
        "SELECT count(*) FROM refresh_tokens WHERE user_id = $1", account.user_id
    )
    assert count == 1  # nothing new was issued


@pytest.mark.parametrize("token", ["unknown-token", "x" * 2048, uuid.uuid4().hex])
async def test_unknown_refresh_token_is_401(client: Client, token: str) -> None:
    await sign_up(client)
    await assert_unauthorized(await refresh(client, token))


async def test_refresh_token_validation(client: Client) -> None:
    for body in ({}, {"refresh_token": ""}, {"refresh_token": "x" * 2049}, {"refresh_token": 1}):
        response = await client.post(REFRESH, json=body)
        problem_body = await problem(response, 422, "validation-failed")
        assert [error["field"] for error in problem_body["errors"]] == ["refresh_token"]


async def test_concurrent_refresh_rotates_a_token_at_most_once(
    client: Client, db: asyncpg.Connection
) -> None:
    account = await sign_up(client)
    responses = await asyncio.gather(*(refresh(client, account.refresh_token) for _ in range(20)))
    statuses = [response.status for response in responses]
    assert statuses.count(200) == 1, statuses
    assert statuses.count(401) == 19, statuses
    winner = next(response for response in responses if response.status == 200)
    pair = await winner.json()

    # Exactly one rotation happened: the family holds the original token and one successor.
    family = await db.fetch(
        "SELECT rotated_at, revoked_at FROM refresh_tokens WHERE user_id = $1", account.user_id
    )
    assert len(family) == 2
    assert sum(row["rotated_at"] is not None for row in family) == 1
    # The 19 others were reuse of a rotated token, so the whole family is revoked.
    assert all(row["revoked_at"] is not None for row in family)
    await assert_unauthorized(await refresh(client, pair["refresh_token"]))
    await assert_unauthorized(await me(client, pair["access_token"]))


# --- logout ------------------------------------------------------------------------------


async def test_logout_ends_the_session(client: Client, db: asyncpg.Connection) -> None:
    account = await sign_up(client)
    other = await login_ok(client, account)
    assert (await me(client, account.access_token)).status == 200

    response = await client.post(LOGOUT, json={"refresh_token": account.refresh_token})
    assert response.status == 204
    assert await response.read() == b""

    await assert_unauthorized(await refresh(client, account.refresh_token))
    body = await assert_unauthorized(await me(client, account.access_token))
    assert body["type"].endswith("/invalid-token")
    # The user's other session still works.
    assert (await me(client, other["access_token"])).status == 200
    assert (await refresh(client, other["refresh_token"])).status == 200


async def test_logout_marks_the_session_revoked_in_redis(client: Client, redis_url: str) -> None:
    account = await sign_up(client)
    sid = jwt.decode(account.access_token, options={"verify_signature": False})["sid"]
    response = await client.post(LOGOUT, json={"refresh_token": account.refresh_token})
    assert response.status == 204
    redis = aioredis.Redis.from_url(redis_url)
    try:
        ttl = await redis.ttl(f"revoked-session:{sid}")
    finally:
        await redis.aclose()
    assert 0 < ttl <= 900


async def test_logout_unknown_token_is_401(client: Client) -> None:
    await sign_up(client)
    response = await client.post(LOGOUT, json={"refresh_token": "no-such-token"})
    await assert_unauthorized(response)


async def test_logout_is_idempotent(client: Client) -> None:
    account = await sign_up(client)
    for _ in range(2):
        response = await client.post(LOGOUT, json={"refresh_token": account.refresh_token})
        assert response.status == 204
    await assert_unauthorized(await me(client, account.access_token))


async def test_logout_with_a_rotated_token_ends_the_newest_session_tokens(client: Client) -> None:
    account = await sign_up(client)
    pair = await (await refresh(client, account.refresh_token)).json()
    response = await client.post(LOGOUT, json={"refresh_token": pair["refresh_token"]})
    assert response.status == 204
    await assert_unauthorized(await refresh(client, pair["refresh_token"]))
    await assert_unauthorized(await me(client, pair["access_token"]))


# --- rate limits -------------------------------------------------------------------------
#
# Each client below connects from its own random loopback address, so the per-IP counter
# ("ratelimit:auth-ip:<address>") of one test is never shared with any other client.

IpClientFactory = Callable[[Settings], Awaitable[tuple[Client, str]]]


@pytest.fixture
def ip_client(aiohttp_client: Callable[..., Awaitable[Client]]) -> IpClientFactory:
    async def factory(app_settings: Settings) -> tuple[Client, str]:
        address = "127.{}.{}.{}".format(*(random.randint(1, 254) for _ in range(3)))
        connector = aiohttp.TCPConnector(local_addr=(address, 0))
        client = await aiohttp_client(create_app(app_settings), connector=connector)
        return client, address

    return factory


async def ratelimit_keys(redis_url: str, *subjects: str) -> dict[str, int]:
    """The rate-limit counters in Redis whose key ends with one of ``subjects``."""
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        found = [key async for key in redis.scan_iter("ratelimit:*")]
        mine = [key for key in found if key.endswith(subjects)]
        return {key: int(await redis.get(key) or 0) for key in mine}
    finally:
        await redis.aclose()


async def test_login_is_rate_limited_per_email(
    ip_client: IpClientFactory, settings: Settings
) -> None:
    client, _ = await ip_client(settings.replace(rate_limit_auth_email=RateLimit(3, 60)))
    email = new_email()
    for _ in range(3):
        assert (await login(client, email, "wrong password")).status == 401
    limited = await login(client, email, "wrong password")
    await problem(limited, 429, "rate-limited")
    retry_after = limited.headers["Retry-After"]
    assert retry_after.isdigit()
    assert 1 <= int(retry_after) <= 60
    # The same email in another case counts as the same email.
    await problem(await login(client, email.upper(), "wrong password"), 429, "rate-limited")
    # Another email is not affected.
    assert (await login(client, new_email(), "wrong password")).status == 401


async def test_rate_limit_applies_even_to_the_right_password(
    ip_client: IpClientFactory, settings: Settings
) -> None:
    client, _ = await ip_client(settings.replace(rate_limit_auth_email=RateLimit(3, 60)))
    account = await sign_up(client)  # the sign-up is the first hit for this email
    assert (await login(client, account.email)).status == 200
    assert (await login(client, account.email)).status == 200
    await problem(await login(client, account.email), 429, "rate-limited")


async def test_login_is_rate_limited_per_ip(ip_client: IpClientFactory, settings: Settings) -> None:
    limited_settings = settings.replace(rate_limit_auth_ip=RateLimit(3, 60))
    client, address = await ip_client(limited_settings)
    for _ in range(3):
        assert (await login(client, new_email(), "wrong password")).status == 401
    limited = await login(client, new_email(), "wrong password")
    await problem(limited, 429, "rate-limited")
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    # Sign-up from the same address is limited by the same counter.
    await problem(await client.post(SIGNUP, json=signup_body()), 429, "rate-limited")
    # Another address is not affected.
    other, other_address = await ip_client(limited_settings)
    assert other_address != address
    assert (await login(other, new_email(), "wrong password")).status == 401


async def test_rate_limits_can_be_turned_off(
    ip_client: IpClientFactory, settings: Settings, redis_url: str
) -> None:
    client, address = await ip_client(
        settings.replace(
            rate_limits_enabled=False,
            rate_limit_auth_ip=RateLimit(1, 60),
            rate_limit_auth_email=RateLimit(1, 60),
        )
    )
    email = new_email()
    statuses = [(await login(client, email, "wrong password")).status for _ in range(6)]
    assert statuses == [401] * 6
    assert await ratelimit_keys(redis_url, email, address) == {}


async def test_rate_limit_counter_lives_in_redis(
    ip_client: IpClientFactory, settings: Settings, redis_url: str
) -> None:
    limited_settings = settings.replace(rate_limit_auth_email=RateLimit(3, 60))
    client, address = await ip_client(limited_settings)
    email = new_email()
    await login(client, email, "wrong password")
    await login(client, email, "wrong password")
    counters = await ratelimit_keys(redis_url, email, address)
    assert counters == {f"ratelimit:auth-email:{email}": 2, f"ratelimit:auth-ip:{address}": 2}
    redis = aioredis.Redis.from_url(redis_url)
    try:
        assert 0 < await redis.ttl(f"ratelimit:auth-email:{email}") <= 60
        # A second app instance shares the counter: it sees the third and fourth hit.
        other, _ = await ip_client(limited_settings)
        assert (await login(other, email, "wrong password")).status == 401
        await problem(await login(other, email, "wrong password"), 429, "rate-limited")
        # And the count starts again once Redis forgets it.
        await redis.delete(f"ratelimit:auth-email:{email}")
    finally:
        await redis.aclose()
    assert (await login(client, email, "wrong password")).status == 401


def _cost_of_new_hashes(settings: Settings) -> argon2.Parameters:
    hasher = create_app(settings)[keys.password_hasher_key]
    used = argon2.extract_parameters(asyncio.run(hasher.hash(PASSWORD)))
    assert used.type is argon2.Type.ID
    return used


def test_passwords_are_hashed_at_argon2ids_full_cost_unless_cheap_hashes_are_asked_for() -> None:
    """The tests ask for cheap hashes (tests/support.py); by default jangteo hashes with
    argon2's own defaults (RFC 9106, low memory)."""
    full = argon2.profiles.RFC_9106_LOW_MEMORY
    used = _cost_of_new_hashes(Settings.from_env({"JANGTEO_JWT_SECRET": TEST_JWT_SECRET}))
    assert (used.time_cost, used.memory_cost, used.parallelism) == (
        full.time_cost, full.memory_cost, full.parallelism,
    )  # fmt: skip
    cheap = Settings.from_env(
        {"JANGTEO_JWT_SECRET": TEST_JWT_SECRET, "JANGTEO_CHEAP_PASSWORD_HASHES": "on"}
    )
    used = _cost_of_new_hashes(cheap)
    assert (used.time_cost, used.memory_cost, used.parallelism) == (1, 1024, 1)
