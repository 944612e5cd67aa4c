"""Envoy ``ext_authz`` (HTTP service) with docs/integrations/envoy.yaml, in front of the
real gateway. Hostile targets go over a raw socket so that no client library normalises
them first."""

from __future__ import annotations

import pytest

from jitgate.audit.events import EventType
from jitgate.services import grants
from tests.integrations.conftest import Deployment, direct, headers_seen

pytestmark = pytest.mark.anyio


async def test_allowed_call_reaches_upstream_with_credential_not_token(envoy: Deployment) -> None:
    issued = envoy.issue(["GET /v1/**"], api="payments")
    reply = await envoy.call(
        "GET", "/payments/v1/charges/7?b=2&a=%20x", issued.token, headers={"X-Trace": "t1"}
    )

    assert reply.status == 200, reply.body
    echo = reply.json()
    assert echo["method"] == "GET"
    assert echo["path"] == "/v1/charges/7"
    assert echo["raw_query"] == "b=2&a=%20x"
    seen = headers_seen(reply)
    assert seen["authorization"] == "Bearer <payments>"  # replaced, not appended
    assert seen["x-trace"] == "t1"  # other headers go through
    assert issued.token not in reply.body.decode()
    assert [(h.method, h.target) for h in envoy.hits] == [("GET", "/v1/charges/7?b=2&a=%20x")]
    (event,) = envoy.events(EventType.ACCESS_ALLOWED)
    assert (event.api, event.grant, event.principal) == ("payments", issued.grant.id, "alice")
    assert event.data["via"] == "envoy"
    assert event.data["path"] == "/v1/charges/7"


async def test_a_write_within_scope_goes_through_with_its_body(envoy: Deployment) -> None:
    issued = envoy.issue(["POST /v1/charges"], api="payments")
    reply = await envoy.call("POST", "/payments/v1/charges", issued.token, data=b'{"qty": 1}')
    assert reply.status == 200, reply.body
    assert reply.json()["method"] == "POST"
    assert reply.json()["body_length"] == 10


async def test_out_of_scope_is_refused_as_by_the_gateway(envoy: Deployment) -> None:
    issued = envoy.issue(["GET /v1/**"], api="payments")
    bodies = []
    for front in (envoy, direct(envoy)):
        reply = await front.call("DELETE", "/payments/v1/charges/7", issued.token)
        event = front.assert_denied(reply, 403, "out-of-scope", api="payments")
        assert event.grant == issued.grant.id
        bodies.append(reply.json())
    assert bodies[0] == bodies[1]
    assert envoy.events(EventType.ACCESS_DENIED)[0].data["via"] == "envoy"


async def test_a_revoked_grant_is_refused_on_the_next_call(envoy: Deployment) -> None:
    issued = envoy.issue(["GET /v1/**"], api="payments")
    assert (await envoy.call("GET", "/payments/v1/charges", issued.token)).status == 200
    grants.revoke(envoy.ctx, envoy.root, issued.grant.id, "incident 7")
    reply = await envoy.call("GET", "/payments/v1/charges", issued.token)
    envoy.assert_denied(reply, 403, "grant-revoked", hits_before=1, api="payments")


HOSTILE = [
    # (method, target, extra headers, status, code)
    ("GET", "/payments/v1/../admin", [], 400, "ambiguous-path"),
    ("GET", "/payments/v1/%2e%2e/admin", [], 400, "ambiguous-path"),
    ("GET", "/payments/v1%2fcharges", [], 400, "ambiguous-path"),
    ("GET", "/payments//v1/charges", [], 400, "ambiguous-path"),
    ("GET", "/payments/v1/charges", [("X-HTTP-Method-Override", "DELETE")], 400, "method-override"),
    ("GET", "/payments/v1/charges", [("X-Method-Override", "PUT")], 400, "method-override"),
    ("GET", "/payments/v1/charges?_method=DELETE", [], 400, "method-override"),
    ("OPTIONS", "/payments/v1/charges", [], 403, "out-of-scope"),
    ("GET", "/payments/v2/charges", [], 403, "out-of-scope"),
]


@pytest.mark.parametrize(("method", "target", "headers", "status", "code"), HOSTILE)
async def test_hostile_requests_are_refused_as_by_the_gateway(
    envoy: Deployment,
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    status: int,
    code: str,
) -> None:
    issued = envoy.issue(["GET /v1/**"], api="payments")
    for front in (envoy, direct(envoy)):
        reply = await front.raw_request(method, target, issued.token, headers)
        front.assert_denied(reply, status, code, api="payments")
        assert front.last_event.data["target"] == target.partition("?")[0]


async def test_token_problems_reach_the_caller_as_problems(envoy: Deployment) -> None:
    maps = envoy.issue(["GET /v1/**"], api="maps")
    reply = await envoy.call("GET", "/payments/v1/charges")
    envoy.assert_denied(reply, 401, "token-missing", api="payments")
    reply = await envoy.call("GET", "/payments/v1/charges", maps.token)
    envoy.assert_denied(reply, 403, "token-audience", api="payments")


async def test_an_api_envoy_does_not_route_never_reaches_an_upstream(envoy: Deployment) -> None:
    # "maps" (query-parameter credential, which ext_authz cannot set) has no route in
    # envoy.yaml; the decision endpoint would refuse it (test_decisions.py).
    issued = envoy.issue(["GET /v1/**"], api="maps")
    reply = await envoy.call("GET", "/maps/v1/tiles", issued.token)
    assert reply.status == 404
    assert envoy.hits == []


async def test_a_gateway_that_is_down_fails_closed(envoy: Deployment) -> None:
    issued = envoy.issue(["GET /v1/**"], api="payments")
    for runner in envoy.cleanups[:1]:  # the gateway's listener
        await runner.cleanup()
    reply = await envoy.call("GET", "/payments/v1/charges", issued.token)
    assert reply.status == 503
    assert envoy.hits == []


async def test_no_secret_in_envoy_logs_or_audit(envoy: Deployment) -> None:
    issued = envoy.issue(api="payments")
    assert (await envoy.call("GET", "/payments/v1/x", issued.token)).status == 200
    await envoy.call("POST", "/payments/v1/x", issued.token)
    for log in envoy.logs:
        envoy.assert_no_secret_in(log.read_text(errors="replace"))
    assert len(envoy.sink.events) == 2
    envoy.assert_no_secret_in(repr(envoy.sink.events))
