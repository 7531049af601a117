"""The close table: every close the server makes has a rule, and the Python client
reconnects exactly when the rule says it may."""

from __future__ import annotations

import pytest

from realtime import disconnect
from realtime.client import PolicyClosed, SessionRevoked, _fatal_close
from realtime.disconnect import RULES, CloseCode, Disconnect, rule_for

SERVER_CLOSES = [value for value in vars(disconnect).values() if isinstance(value, Disconnect)]


def test_every_close_the_server_makes_has_a_rule_and_a_metric() -> None:
    assert len(SERVER_CLOSES) >= 8
    for close in SERVER_CLOSES:
        assert close.code in RULES, close
        assert close.reason and close.metric, close
    assert len({close.metric for close in SERVER_CLOSES}) == len(SERVER_CLOSES)


@pytest.mark.parametrize("code", [*CloseCode, 1000, 1006, None])
def test_the_client_reconnects_exactly_when_the_rule_says_so(code: int | None) -> None:
    stop = _fatal_close(code)
    assert (stop is None) == rule_for(code).reconnect
    if code == CloseCode.SESSION_ENDED:
        assert isinstance(stop, SessionRevoked)
    elif stop is not None:
        assert isinstance(stop, PolicyClosed) and stop.code == code


def test_the_rules_of_each_code() -> None:
    reconnecting = {code for code, rule in RULES.items() if rule.reconnect}
    assert reconnecting == {
        CloseCode.GOING_AWAY,
        CloseCode.INTERNAL_ERROR,
        CloseCode.TRY_AGAIN_LATER,
    }
    assert "sign in" in RULES[CloseCode.SESSION_ENDED].then
    assert "backoff" in RULES[CloseCode.TRY_AGAIN_LATER].then
    assert "at once" in RULES[CloseCode.GOING_AWAY].then
