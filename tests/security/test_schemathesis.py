"""schemathesis against the served ``/openapi.json``: no 5xx, every answer as documented.

Every check schemathesis has, positive and negative data, and the stateful phase over the
links it infers (a created listing's id fed to the routes that take one), as a signed-in
user so the protected routes are reached. The seed is fixed and generation derandomized,
so a failure names a request that fails again on the next run.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import pytest
import schemathesis
from schemathesis import Case
from schemathesis.core.parameters import ParameterLocation
from schemathesis.engine import Status, events, from_schema
from schemathesis.engine.core import EventStream

from server.chats.handlers import encode_room_cursor
from server.cursors import encode_cursor
from server.openapi import IDEMPOTENCY_KEY
from tests.security.support import signed_up_token
from tests.support import ServerProcess

AnyCase = Case[Any]
SEED = 20261201
MAX_EXAMPLES = 5  # per operation and phase: about 30 s of requests on a loaded 2-core machine


@pytest.fixture
def served(server_env: dict[str, str]) -> Iterator[ServerProcess]:
    """A real ``jangteo serve`` process: the app as deployed, over a real socket."""
    server = ServerProcess({**server_env, "JANGTEO_RATE_LIMITS": "off"}).start()
    yield server
    server.stop()


def _config(base_url: str, token: str) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "base-url": base_url,
            "headers": {"Authorization": f"Bearer {token}"},
            "generation": {
                "mode": "all",
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
            },
            "checks": {
                # A valid request may still meet a state that refuses it: an ETag gone
                # stale (412) is as legitimate an answer as a sold-out listing (409).
                "positive_data_acceptance": {
                    "expected-statuses": ["2xx", "3xx", 401, 403, 404, 409, 412, 429]
                },
            },
            "operations": [
                {
                    # A plain GET is not an upgrade: the socket itself is tested in
                    # tests/realtime and tests/security/test_websocket.py.
                    "include-path": "/api/v1/ws",
                    "checks": {"positive_data_acceptance": {"enabled": False}},
                },
            ],
            "workers": 1,
            "request-timeout": 30,
        }
    )


def _negative(case: AnyCase, location: ParameterLocation) -> bool:
    return case.meta is not None and case.meta.is_negative_at(location)


def _as_a_real_client(context: schemathesis.HookContext, case: AnyCase) -> AnyCase:
    """Valid requests carry what only a real client has: a cursor the API handed out (an
    opaque cursor is valid only then) and a fresh Idempotency-Key per request (a key reused
    with another body is rightly 422). Values generated to be invalid are left alone."""
    if case.query and "cursor" in case.query and not _negative(case, ParameterLocation.QUERY):
        rooms = case.path == "/api/v1/chats"
        case.query["cursor"] = (
            encode_room_cursor(datetime.now(UTC), 2**62) if rooms else encode_cursor(2**62)
        )
    name = IDEMPOTENCY_KEY.name
    if case.headers and name in case.headers and not _negative(case, ParameterLocation.HEADER):
        case.headers[name] = str(uuid.uuid4())
    return case


@dataclass(slots=True)
class Outcome:
    """What a run found, and what it got answered (method, path, status) to show it reached
    the protected routes as the signed-in user."""

    failures: list[str] = field(default_factory=list)
    answered: set[tuple[str, str, int]] = field(default_factory=set)

    def record(self, event: events.ScenarioFinished) -> None:
        recorder = event.recorder
        for interaction in recorder.interactions.values():
            if interaction.response is not None:
                path = urlsplit(interaction.request.uri).path
                self.answered.add(
                    (interaction.request.method, path, interaction.response.status_code)
                )
        for case_id, checks in recorder.checks.items():
            for check in checks:
                if check.status == Status.FAILURE and check.failure_info is not None:
                    failure = check.failure_info.failure
                    response = recorder.find_response(case_id=case_id)
                    answer = f"{response.status_code} {response.text[:500]}" if response else "-"
                    self.failures.append(
                        f"{recorder.label} [{event.phase}] {check.name}: "
                        f"{failure.title}\n{failure.message}\n"
                        f"{check.failure_info.code_sample}\n-> {answer}"
                    )


def _run(stream: EventStream) -> Outcome:
    outcome = Outcome()
    for event in stream:
        if isinstance(event, events.ScenarioFinished):
            outcome.record(event)
        elif isinstance(event, events.NonFatalError | events.FatalError):
            outcome.failures.append(f"schemathesis could not run: {event!r}")
    return outcome


def test_the_served_api_keeps_to_its_openapi_document(served: ServerProcess) -> None:
    token = signed_up_token(served.url)
    schema = schemathesis.openapi.from_url(
        served.url + "/openapi.json", config=_config(served.url, token), timeout=30
    )
    schema.hook("map_case")(_as_a_real_client)
    outcome = _run(from_schema(schema).execute())
    assert not outcome.failures, "\n\n".join(dict.fromkeys(outcome.failures))
    # It ran as the signed-in user: protected routes answered with success.
    for reached in (("POST", "/api/v1/listings", 201), ("GET", "/api/v1/wallet", 200)):
        assert reached in outcome.answered, (reached, sorted(outcome.answered)[:50])
