"""Usage limits at the gateway: a grant's call quota (``max_calls``) and rate limit."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest

from jitgate.audit.events import EventType, NewEvent
from jitgate.gateway.view import GatewayView
from jitgate.policy import parse_policy
from jitgate.tokens.grant_token import GrantClaims, verify_signature
from tests.gateway.conftest import Harness

pytestmark = pytest.mark.anyio

TARGET = "/demo/v1/items"
POLICY = """\
version: 1
rules:
  - name: quota
    requesters: {groups: [engineering]}
    apis: [demo]
    scopes: ["GET /v1/**"]
    approval: auto
    max_calls: 3
  - name: rate
    requesters: {groups: [engineering]}
    apis: [demo]
    scopes: ["POST /v1/**"]
    approval: auto
    rate_limit: 2/s
  - name: free
    requesters: {groups: [engineering]}
    apis: [demo]
    scopes: ["* /**"]
    approval: auto
"""


@pytest.fixture
def limited(gw: Harness) -> Harness:
    gw.ctx.replace_policy(parse_policy(POLICY, "limits.yaml"))
    return gw


def claims(gw: Harness, token: str) -> GrantClaims:
    verified = verify_signature(token, gw.view.public_keys, gw.enforcer.issuer)
    assert isinstance(verified, GrantClaims), verified
    return verified


async def test_the_quota_admits_exactly_max_calls(limited: Harness) -> None:
    issued = limited.issue(["GET /v1/**"])
    assert claims(limited, issued.token).max_calls == 3  # the token carries its limits
    for _ in range(3):
        assert (await limited.call("GET", TARGET, issued.token)).status == 200
    reply = await limited.call("GET", TARGET, issued.token)
    limited.assert_denied(reply, 429, "quota-exhausted", hits_before=3)
    # a refused call never uses quota up, and a new grant has its own
    fresh = limited.issue(["GET /v1/**"])
    assert (await limited.call("GET", TARGET, fresh.token)).status == 200


async def test_calls_refused_for_another_reason_use_no_quota(limited: Harness) -> None:
    issued = limited.issue(["GET /v1/**"])
    for _ in range(5):
        reply = await limited.call("GET", "/demo/v2/outside", issued.token)
        limited.assert_denied(reply, 403, "out-of-scope")
    for _ in range(3):
        assert (await limited.call("GET", TARGET, issued.token)).status == 200


async def test_the_rate_limit_allows_a_burst_then_refills(limited: Harness) -> None:
    issued = limited.issue(["POST /v1/**"])
    assert claims(limited, issued.token).rate == (2, 1.0)
    assert (await limited.call("POST", TARGET, issued.token)).status == 200
    assert (await limited.call("POST", TARGET, issued.token)).status == 200
    reply = await limited.call("POST", TARGET, issued.token)
    limited.assert_denied(reply, 429, "rate-limited", hits_before=2)
    limited.clock.advance(timedelta(milliseconds=499))
    reply = await limited.call("POST", TARGET, issued.token)
    limited.assert_denied(reply, 429, "rate-limited", hits_before=2)
    limited.clock.advance(timedelta(milliseconds=1))  # half a second: one token back
    assert (await limited.call("POST", TARGET, issued.token)).status == 200
    limited.clock.advance(timedelta(seconds=60))  # never more than the burst
    limited.view.resync()  # (the frozen clock made the revocation view stale)
    for _ in range(2):
        assert (await limited.call("POST", TARGET, issued.token)).status == 200
    reply = await limited.call("POST", TARGET, issued.token)
    limited.assert_denied(reply, 429, "rate-limited", hits_before=5)


async def test_a_grant_without_limits_is_not_counted(limited: Harness) -> None:
    issued = limited.issue(["DELETE /v1/**"])
    assert claims(limited, issued.token).max_calls is None
    for _ in range(10):
        assert (await limited.call("DELETE", TARGET, issued.token)).status == 200


async def test_a_restarted_gateway_counts_the_calls_already_audited(limited: Harness) -> None:
    issued = limited.issue(["GET /v1/**"])
    assert (await limited.call("GET", TARGET, issued.token)).status == 200
    # The audit trail as the writer would store it: two calls admitted before a restart.
    with limited.store.transaction() as tx:
        tx.audit.append(
            [
                NewEvent(
                    type=EventType.ACCESS_ALLOWED,
                    at=limited.clock.now(),
                    principal="alice",
                    api="demo",
                    grant=issued.grant.id,
                    data={"status": 200},
                )
                for _ in range(2)
            ]
        )
    restarted = GatewayView(limited.store, limited.box, limited.clock, max_staleness=2.0)
    restarted.resync()
    admitted = restarted.usage.admit(claims(limited, issued.token), limited.clock.timestamp())
    assert admitted is None  # the third call
    refused = restarted.usage.admit(claims(limited, issued.token), limited.clock.timestamp())
    assert refused == ("quota-exhausted", "the grant's 3 calls are used up")


async def test_forged_limits_fail_verification(limited: Harness) -> None:
    """The limits are claims under the signature: a caller cannot lift them."""
    issued = limited.issue(["GET /v1/**"])
    header, payload, signature = issued.token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body["lim"] = {"calls": 1_000_000}
    forged_payload = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    forged = f"{header}.{forged_payload}.{signature}"
    reply = await limited.call("GET", TARGET, forged)
    limited.assert_denied(reply, 401, "token-signature")
