"""Envoy ``ext_authz`` (HTTP service) with docs/integrations/envoy.yaml, in front of the
real gateway. Hostile targets go over a raw socket so that no client library normalises
them first."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import yaml

from jitgate.audit.events import EventType
from jitgate.gateway.bodies import MAX_FORM_SIZE
from jitgate.services import grants
from tests.integrations.conftest import Deployment, direct, example, headers_seen

pytestmark = pytest.mark.anyio

FORM = ("Content-Type", "application/x-www-form-urlencoded")
JSON = ("Content-Type", "application/json")


def body_settings() -> dict[str, Any]:
    """The ext_authz filter's ``with_request_body`` in the shipped envoy.yaml."""
    names = ("LISTEN_ADDRESS", "GATEWAY_ADDRESS", "PAYMENTS_ADDRESS")
    ports = ("LISTEN_PORT", "GATEWAY_PORT", "PAYMENTS_PORT")
    values: dict[str, str | int] = dict.fromkeys(names, "127.0.0.1") | dict.fromkeys(ports, 1)
    config = yaml.safe_load(example("envoy.yaml", values))
    (chain,) = config["static_resources"]["listeners"][0]["filter_chains"]
    manager = chain["filters"][0]["typed_config"]
    (authz,) = [f for f in manager["http_filters"] if f["name"].endswith("ext_authz")]
    settings: dict[str, Any] = authz["typed_config"]["with_request_body"]
    return settings


def test_envoy_sends_whole_bodies_up_to_the_gateways_form_limit() -> None:
    settings = body_settings()
    assert settings["allow_partial_message"] is False  # a larger body is refused, not cut
    assert settings["max_request_bytes"] == MAX_FORM_SIZE


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


OVERRIDES = [
    # (headers, body): a form body naming _method, as the gateway reads one
    ([FORM], b"a=1&_method=DELETE"),
    ([FORM], b"%5Fmethod=PUT"),
    ([("Content-Type", "Application/X-WWW-Form-Urlencoded; charset=utf-8")], b"_method=DELETE"),
    ([], b"_method=DELETE"),  # no Content-Type: Rack reads it as a form
]


@pytest.mark.parametrize(("headers", "body"), OVERRIDES)
async def test_a_method_override_in_a_form_body_is_refused_as_by_the_gateway(
    envoy: Deployment, headers: list[tuple[str, str]], body: bytes
) -> None:
    issued = envoy.issue(["POST /v1/charges"], api="payments")
    problems = []
    for front in (envoy, direct(envoy)):
        reply = await front.raw_request("POST", "/payments/v1/charges", issued.token, headers, body)
        event = front.assert_denied(reply, 400, "method-override", api="payments")
        assert (event.grant, event.data["target"]) == (issued.grant.id, "/payments/v1/charges")
        problems.append(reply.json())
    assert problems[0] == problems[1]  # the very problem document of the gateway
    first, second = envoy.events(EventType.ACCESS_DENIED)
    assert (first.data["via"], "via" in second.data) == ("envoy", False)


async def test_a_chunked_untyped_form_is_judged_by_its_whole_length(envoy: Deployment) -> None:
    # Envoy buffers the body and declares its length to jitgate, so an untyped chunked
    # body within the form limit is read as a form (as Rack reads it), and refused.
    issued = envoy.issue(["POST /v1/charges"], api="payments")
    head = (
        f"POST /payments/v1/charges HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {issued.token}\r\nTransfer-Encoding: chunked\r\n"
        "Connection: close\r\n\r\n"
    )
    reply = await envoy.raw(head.encode() + b"4\r\na=1&\r\ne\r\n_method=DELETE\r\n0\r\n\r\n")
    envoy.assert_denied(reply, 400, "method-override", api="payments")


async def test_a_form_post_reaches_the_upstream_with_its_body_intact(envoy: Deployment) -> None:
    issued = envoy.issue(["POST /v1/charges"], api="payments")
    body = b"amount=5&currency=eur&note=%5Fmethod+is+text&method=DELETE"
    reply = await envoy.call(
        "POST", "/payments/v1/charges", issued.token, headers=[FORM], data=body
    )
    assert reply.status == 200, reply.body
    echo = reply.json()
    assert echo["method"] == "POST"
    assert (echo["body_length"], echo["body_sha256"]) == (
        len(body),
        hashlib.sha256(body).hexdigest(),
    )
    seen = headers_seen(reply)
    assert seen["content-type"] == FORM[1]
    assert seen["authorization"] == "Bearer <payments>"
    (event,) = envoy.events(EventType.ACCESS_ALLOWED)
    assert (event.data["method"], event.data["via"]) == ("POST", "envoy")


async def test_a_json_post_passes_even_naming_method(envoy: Deployment) -> None:
    # Only form bodies are read as forms, by the frameworks as by the gateway.
    issued = envoy.issue(["POST /v1/charges"], api="payments")
    body = b'{"_method": "DELETE", "amount": 5}'
    reply = await envoy.call(
        "POST", "/payments/v1/charges", issued.token, headers=[JSON], data=body
    )
    assert reply.status == 200, reply.body
    echo = reply.json()
    assert (echo["method"], echo["body_sha256"]) == ("POST", hashlib.sha256(body).hexdigest())
    assert headers_seen(reply)["content-type"] == JSON[1]


async def test_bodies_up_to_the_bound_pass_and_larger_ones_never_leave_envoy(
    envoy: Deployment,
) -> None:
    bound = body_settings()["max_request_bytes"]
    issued = envoy.issue(["POST /v1/**"], api="payments")
    for headers in ([JSON], [FORM]):
        body = b"a=" + b"x" * (bound - 2)
        reply = await envoy.call(
            "POST", "/payments/v1/up", issued.token, headers=headers, data=body
        )
        assert reply.status == 200, reply.body
        assert reply.json()["body_length"] == bound
    hits, events = len(envoy.hits), len(envoy.sink.events)

    for headers in ([JSON], [FORM], []):
        body = b"_method=DELETE&" + b"x" * (bound - 14)  # one byte over
        reply = await envoy.raw_request("POST", "/payments/v1/up", issued.token, headers, body)
        assert reply.status == 413  # Envoy's own answer: neither jitgate nor the API asked
        assert len(envoy.hits) == hits
        assert len(envoy.sink.events) == events
