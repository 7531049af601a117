"""HTTP endpoints of accounts: parse, rate-limit, call the service, answer."""

from __future__ import annotations

from aiohttp import web

from server import keys
from server.auth import service
from server.auth.schemas import (
    LoginBody,
    RefreshBody,
    SignupBody,
    SignupOut,
    TokenPairOut,
    UserOut,
)
from server.auth.sessions import authenticate
from server.client_address import client_address
from server.errors import InvalidToken
from server.jsonio import json_response, read_json
from server.openapi import ApiSpec


async def _limit_auth(request: web.Request, email: str) -> None:
    settings = request.app[keys.settings_key]
    limiter = request.app[keys.rate_limiter_key]
    trusted = request.app[keys.trusted_proxies_key]
    address = client_address(request, trusted)
    await limiter.hit("auth-ip", address, settings.rate_limit_auth_ip)
    await limiter.hit("auth-email", email.lower(), settings.rate_limit_auth_email)


async def signup(request: web.Request) -> web.Response:
    body = await read_json(request, SignupBody)
    await _limit_auth(request, body.email)
    user, pair = await service.sign_up(
        request.app[keys.pg_pool_key],
        request.app[keys.password_hasher_key],
        request.app[keys.token_issuer_key],
        email=body.email,
        password=body.password,
        nickname=body.nickname,
        region=body.region,
    )
    out = SignupOut(user=user, **pair.model_dump())
    return json_response(out, status=201, headers={"Location": "/api/v1/me"})


async def login(request: web.Request) -> web.Response:
    body = await read_json(request, LoginBody)
    await _limit_auth(request, body.email)
    pair = await service.log_in(
        request.app[keys.pg_pool_key],
        request.app[keys.password_hasher_key],
        request.app[keys.token_issuer_key],
        email=body.email,
        password=body.password,
    )
    return json_response(pair)


async def refresh(request: web.Request) -> web.Response:
    body = await read_json(request, RefreshBody)
    issuer = request.app[keys.token_issuer_key]
    outcome = await service.refresh(request.app[keys.pg_pool_key], issuer, body.refresh_token)
    if outcome.revoked_family is not None:
        await request.app[keys.session_revocations_key].revoke(
            outcome.revoked_family, issuer.access_ttl
        )
        raise InvalidToken("refresh token reused; the whole session is revoked")
    if outcome.pair is None:
        raise InvalidToken("refresh token unknown or expired")
    return json_response(outcome.pair)


async def logout(request: web.Request) -> web.Response:
    body = await read_json(request, RefreshBody)
    session_id = await service.log_out(request.app[keys.pg_pool_key], body.refresh_token)
    ttl = request.app[keys.token_issuer_key].access_ttl
    await request.app[keys.session_revocations_key].revoke(session_id, ttl)
    return web.Response(status=204)


async def me(request: web.Request) -> web.Response:
    claims = await authenticate(request)
    user = await service.current_user(request.app[keys.pg_pool_key], claims.user_id)
    return json_response(user)


def setup_routes(app: web.Application, spec: ApiSpec) -> None:
    prefix = "/api/v1"
    spec.route(
        app, "POST", f"{prefix}/auth/signup", signup,
        summary="Create an account and start a session", tag="auth",
        body=SignupBody, response=SignupOut, status=201, errors=(409, 429),
    )  # fmt: skip
    spec.route(
        app, "POST", f"{prefix}/auth/login", login,
        summary="Start a session", tag="auth",
        body=LoginBody, response=TokenPairOut, errors=(401, 429),
    )  # fmt: skip
    spec.route(
        app, "POST", f"{prefix}/auth/refresh", refresh,
        summary="Rotate a refresh token; reusing a rotated one revokes the session", tag="auth",
        body=RefreshBody, response=TokenPairOut, errors=(401,),
    )  # fmt: skip
    spec.route(
        app, "POST", f"{prefix}/auth/logout", logout,
        summary="End the session of a refresh token", tag="auth",
        body=RefreshBody, status=204, errors=(401,),
    )  # fmt: skip
    spec.route(
        app, "GET", f"{prefix}/me", me,
        summary="The signed-in user", tag="auth", response=UserOut, auth=True,
    )  # fmt: skip
