"""schemathesis against the served ``/openapi.json``: no 5xx, every answer as documented.

Every check schemathesis has, positive and negative data, and the stateful phase over the
links it infers (a created listing's id fed to the routes that take one), as a signed-in
user so the protected routes are reached. A request the document calls valid is accepted:
cursors, If-Match and the WebSocket handshake have patterns that say exactly what the
server takes. The seed is fixed and generation derandomized, so a failure names a request
that fails again on the next run.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import schemathesis
from schemathesis import Case
from schemathesis.core.parameters import ParameterLocation
from schemathesis.core.result import Ok
from schemathesis.engine import Status, events, from_schema
from schemathesis.engine.core import EventStream
from schemathesis.hooks import GLOBAL_HOOK_DISPATCHER

from server.openapi import IDEMPOTENCY_KEY
from tests.security.support import signed_up_token
from tests.support import ServerProcess

AnyCase = Case[Any]
SEED = 20261201
# Per operation and phase (the coverage phase makes every case the document defines, however
# many). Ids in paths are integers and names have patterns, so generating them is cheap
# (strings that must survive a URL path cost hypothesis most of the time). The fuzzing
# phase, which follows the coverage phase's edge cases, takes fewer per operation; the
# stateful phase keeps MAX_EXAMPLES for its scenarios over the links.
MAX_EXAMPLES = 40
FUZZING_EXAMPLES = 20


@pytest.fixture
def served(server_env: dict[str, str]) -> Iterator[ServerProcess]:
    """A real ``jangteo serve`` process: the app as deployed, over a real socket."""
    server = ServerProcess({**server_env, "JANGTEO_RATE_LIMITS": "off"}).start()
    yield server
    server.stop()


# A valid request may still meet a state that refuses it: an ETag gone stale (412) is as
# legitimate an answer as a sold-out listing (409).
ACCEPTED = ["2xx", "3xx", 401, 403, 404, 409, 412, 429]
# Schemathesis's own lists of refusals, with two it leaves out: an If-Match that is neither
# * nor an ETag is a condition that is false (412, RFC 9110 section 13.1.1), and a missing
# one is 428 (RFC 6585).
REFUSED = [400, 401, 403, 404, 405, 406, 409, 412, 415, 422, 428, 429, "5xx"]
REFUSED_MISSING_HEADER = [400, 401, 403, 406, 415, 422, 428]


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
            "phases": {
                "fuzzing": {"generation": {"max-examples": FUZZING_EXAMPLES}},
                "stateful": {"enabled": True},
            },
            "checks": {
                "positive_data_acceptance": {"expected-statuses": ACCEPTED},
                "negative_data_rejection": {"expected-statuses": REFUSED},
                "missing_required_header": {"expected-statuses": REFUSED_MISSING_HEADER},
            },
            "operations": [
                {
                    # The handshake is in the document: a valid request is upgraded (101),
                    # and a ticket that is not good is refused after that, with close 1008
                    # (tests/realtime and tests/security/test_websocket.py).
                    "include-path": "/api/v1/ws",
                    "checks": {
                        "not_a_server_error": {"expected-statuses": [101, "2xx", "3xx", "4xx"]},
                        "positive_data_acceptance": {"expected-statuses": [101]},
                    },
                },
            ],
            "workers": 1,
            "request-timeout": 30,
        }
    )


def _negative(case: AnyCase, location: ParameterLocation) -> bool:
    return case.meta is not None and case.meta.is_negative_at(location)


def _as_a_real_client(context: schemathesis.HookContext, case: AnyCase) -> AnyCase:
    """A valid request carries a fresh Idempotency-Key, as a real client's does: generated
    keys repeat ("0" on one order, then on another), and a key used before with another
    request is rightly 422, as documented. Keys generated to be invalid are left alone."""
    name = IDEMPOTENCY_KEY.name
    if case.headers and name in case.headers and not _negative(case, ParameterLocation.HEADER):
        case.headers[name] = str(uuid.uuid4())
    return case


def _close_when_upgraded(context: schemathesis.HookContext, case: AnyCase, kwargs: Any) -> None:
    """requests cannot speak WebSocket: a connection switched to it (101) is closed, so that
    the next request does not go out on it as if it were still HTTP."""
    kwargs["hooks"] = {"response": _close_if_upgraded}


def _close_if_upgraded(response: requests.Response, *args: Any, **kwargs: Any) -> None:
    if response.status_code == HTTPStatus.SWITCHING_PROTOCOLS:
        response.raw.close()


@dataclass(slots=True)
class Outcome:
    """What a run found, and what it got answered (method, path, status) to show it reached
    the protected routes as the signed-in user."""

    failures: list[str] = field(default_factory=list)
    answered: set[tuple[str, str, int]] = field(default_factory=set)
    # The operations (by label) that got an answer, by phase.
    reached: dict[str, set[str]] = field(default_factory=dict)

    def record(self, event: events.ScenarioFinished) -> None:
        recorder = event.recorder
        for case_id, interaction in recorder.interactions.items():
            if interaction.response is not None:
                path = urlsplit(interaction.request.uri).path
                self.answered.add(
                    (interaction.request.method, path, interaction.response.status_code)
                )
                operation = recorder.cases[case_id].value.operation.label
                self.reached.setdefault(str(event.phase), set()).add(operation)
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
    # before_call hooks are global only: registered for this run and no longer.
    schemathesis.hook("before_call")(_close_when_upgraded)
    try:
        outcome = _run(from_schema(schema).execute())
    finally:
        GLOBAL_HOOK_DISPATCHER.unregister(_close_when_upgraded)
    assert not outcome.failures, "\n\n".join(dict.fromkeys(outcome.failures))
    # Every operation of the document was called in each phase that generates data, and
    # the stateful phase followed the links between them.
    operations = set()
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operations.add(result.ok().label)
    for phase in ("coverage", "fuzzing"):
        missed = operations - outcome.reached.get(phase, set())
        assert not missed, (phase, sorted(missed))
    linked = {
        "POST /api/v1/listings",
        "GET /api/v1/listings/{id}",
        "POST /api/v1/listings/{id}/purchase",
    }
    stateful = outcome.reached.get("stateful", set())
    assert linked <= stateful, sorted(stateful)
    # It ran as the signed-in user (protected routes answered with success), and the
    # socket's handshake as documented is one the server takes.
    for reached in (
        ("POST", "/api/v1/listings", 201),
        ("GET", "/api/v1/wallet", 200),
        ("GET", "/api/v1/ws", 101),
    ):
        assert reached in outcome.answered, (reached, sorted(outcome.answered)[:50])
