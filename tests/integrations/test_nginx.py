"""nginx ``auth_request`` with docs/integrations/nginx.conf, in front of the real gateway.

Hostile targets go over a raw socket so that no client library normalises them first.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jitgate.audit.events import EventType
from jitgate.services import grants
from tests.integrations.conftest import Deployment, direct, headers_seen, running_nginx

pytestmark = pytest.mark.anyio

FORM = ("Content-Type", "application/x-www-form-urlencoded")
FORM_REFUSAL = "if ($jitgate_form_post) { return 415; }"


def refusing_forms(site: str) -> str:
    """nginx.conf with the form refusal of API "payments" uncommented, as documented."""
    assert site.count(f"# {FORM_REFUSAL}") == 1
    return site.replace(f"# {FORM_REFUSAL}", FORM_REFUSAL)


@pytest.fixture
async def nginx_refusing_forms(jg: Deployment, tmp_path: Path) -> AsyncIterator[Deployment]:
    async with running_nginx(jg, tmp_path, refusing_forms) as front:
        yield front


async def test_allowed_call_reaches_upstream_with_credential_not_token(nginx: Deployment) -> None:
    issued = nginx.issue(["GET /v1/**"], api="payments")
    reply = await nginx.call("GET", "/payments/v1/charges/7?b=2&a=%20x", issued.token)

    assert reply.status == 200, reply.body
    echo = reply.json()
    assert echo["method"] == "GET"
    assert echo["path"] == "/v1/charges/7"  # the API prefix stripped
    assert echo["raw_query"] == "b=2&a=%20x"
    seen = headers_seen(reply)
    assert seen["authorization"] == "Bearer <payments>"  # the injected one (masked by echo)
    assert issued.token not in reply.body.decode()
    assert [(h.method, h.target) for h in nginx.hits] == [("GET", "/v1/charges/7?b=2&a=%20x")]
    (event,) = nginx.events(EventType.ACCESS_ALLOWED)
    assert (event.api, event.grant, event.principal) == ("payments", issued.grant.id, "alice")
    assert event.data["via"] == "nginx"
    assert event.data["path"] == "/v1/charges/7"


async def test_consecutive_allowed_calls_reuse_one_upstream_connection(
    nginx: Deployment,
) -> None:
    # Each API has its own upstream block with keep-alive: HTTP/1.1, and the connection
    # of the previous call is taken again (not one new connection per call).
    for api, target in (("payments", "/payments/v1/charges"), ("maps", "/maps/v1/tiles")):
        issued = nginx.issue(["GET /v1/**"], api=api)
        nginx.upstream_peers.clear()
        for _ in range(3):
            reply = await nginx.call("GET", target, issued.token)
            assert reply.status == 200, reply.body
            assert "connection" not in headers_seen(reply)  # not "close": kept alive
        assert len(nginx.upstream_peers) == 3
        assert len(set(nginx.upstream_peers)) == 1, f"{api}: {nginx.upstream_peers}"


async def test_pooled_calls_carry_the_credential_and_host_the_gateway_sends(
    nginx: Deployment,
) -> None:
    pay, maps = nginx.issue(["GET /v1/**"], api="payments"), nginx.issue(["GET /v1/**"], api="maps")
    host = f"127.0.0.1:{nginx.upstream_port}"
    for front in (nginx, direct(nginx)):
        reply = await front.call("GET", "/payments/v1/charges?a=1", pay.token)
        assert reply.status == 200, reply.body
        assert (reply.json()["path"], reply.json()["raw_query"]) == ("/v1/charges", "a=1")
        seen = headers_seen(reply)
        assert seen["host"] == host
        assert seen["authorization"] == "Bearer <payments>"  # the injected one (masked)
        assert pay.token not in reply.body.decode()

        reply = await front.call("GET", "/maps/v1/tiles?z=3&key=mine", maps.token)
        assert reply.status == 200, reply.body
        echo = reply.json()
        assert echo["path"] == "/maps-base/v1/tiles"  # the base URL's path, then the target
        assert echo["query"] == [["z", "3"], ["key", "<maps>"]]
        seen = headers_seen(reply)
        assert seen["host"] == host
        assert "authorization" not in seen  # the grant token was dropped
        assert maps.token not in reply.body.decode()


async def test_nginx_forwards_the_raw_path_that_was_checked(nginx: Deployment) -> None:
    # nginx's own URI is decoded ("charges"); the gateway checks and forwards the raw path.
    issued = nginx.issue(["GET /v1/**"], api="payments")
    through = await nginx.raw_request("GET", "/payments/v1/ch%61rges/%7e7", issued.token)
    built_in = await direct(nginx).raw_request("GET", "/payments/v1/ch%61rges/%7e7", issued.token)
    assert through.status == built_in.status == 200
    assert through.json()["path"] == built_in.json()["path"] == "/v1/ch%61rges/%7e7"


async def test_query_parameter_credential_replaces_the_callers(nginx: Deployment) -> None:
    issued = nginx.issue(["GET /v1/**"], api="maps")
    reply = await nginx.call("GET", "/maps/v1/tiles?z=3&key=mine", issued.token)
    assert reply.status == 200, reply.body
    echo = reply.json()
    assert echo["path"] == "/maps-base/v1/tiles"
    assert echo["query"] == [["z", "3"], ["key", "<maps>"]]  # one key: the injected one
    assert "authorization" not in headers_seen(reply)  # the grant token was dropped


async def test_out_of_scope_is_refused_as_by_the_gateway(nginx: Deployment) -> None:
    issued = nginx.issue(["GET /v1/**"], api="payments")
    for front in (nginx, direct(nginx)):
        reply = await front.call("POST", "/payments/v1/charges", issued.token, data=b"{}")
        event = front.assert_denied(reply, 403, "out-of-scope", api="payments")
        assert event.grant == issued.grant.id
    assert nginx.events(EventType.ACCESS_DENIED)[0].data["via"] == "nginx"


async def test_a_revoked_grant_is_refused_on_the_next_call(nginx: Deployment) -> None:
    issued = nginx.issue(["GET /v1/**"], api="payments")
    assert (await nginx.call("GET", "/payments/v1/charges", issued.token)).status == 200
    grants.revoke(nginx.ctx, nginx.root, issued.grant.id, "incident 7")
    reply = await nginx.call("GET", "/payments/v1/charges", issued.token)
    nginx.assert_denied(reply, 403, "grant-revoked", hits_before=1, api="payments")


HOSTILE = [
    # (method, target, extra headers, status, code)
    ("GET", "/payments/v1/../admin", [], 400, "ambiguous-path"),
    ("GET", "/payments/v1/%2e%2e/admin", [], 400, "ambiguous-path"),
    ("GET", "/payments/v1%2fcharges", [], 400, "ambiguous-path"),
    ("GET", "/payments/v1/%5ccharges", [], 400, "ambiguous-path"),
    ("GET", "/payments//v1/charges", [], 400, "ambiguous-path"),
    ("GET", "/payments/v1/charges", [("X-HTTP-Method-Override", "DELETE")], 400, "method-override"),
    ("GET", "/payments/v1/charges?_method=DELETE", [], 400, "method-override"),
    ("DELETE", "/payments/v1/charges", [], 403, "out-of-scope"),
    ("GET", "/payments/v2/charges", [], 403, "out-of-scope"),
]


@pytest.mark.parametrize(("method", "target", "headers", "status", "code"), HOSTILE)
async def test_hostile_requests_are_refused_as_by_the_gateway(
    nginx: Deployment,
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    status: int,
    code: str,
) -> None:
    issued = nginx.issue(["GET /v1/**"], api="payments")
    bodies = []
    for front in (nginx, direct(nginx)):
        reply = await front.raw_request(method, target, issued.token, headers)
        front.assert_denied(reply, status, code, api="payments")
        assert front.last_event.data["target"] == target.partition("?")[0]
        bodies.append(reply.json())
    assert bodies[0] == bodies[1]  # the very problem document of the gateway


async def test_token_problems_are_the_gateways(nginx: Deployment) -> None:
    maps = nginx.issue(["GET /v1/**"], api="maps")
    reply = await nginx.call("GET", "/payments/v1/charges")
    nginx.assert_denied(reply, 401, "token-missing", api="payments")
    assert reply.headers.getall("WWW-Authenticate") == ['Bearer realm="jitgate"']
    reply = await nginx.call("GET", "/payments/v1/charges", "not-a-jws")
    nginx.assert_denied(reply, 401, "token-malformed", api="payments")
    reply = await nginx.call("GET", "/payments/v1/charges", maps.token)
    nginx.assert_denied(reply, 403, "token-audience", api="payments")


async def test_no_secret_in_nginx_logs_or_audit(nginx: Deployment) -> None:
    pay, maps = nginx.issue(api="payments"), nginx.issue(api="maps")
    assert (await nginx.call("GET", "/payments/v1/x", pay.token)).status == 200
    assert (await nginx.call("GET", "/maps/v1/x?key=k", maps.token)).status == 200
    await nginx.call("GET", "/payments/v1/x", maps.token)
    for log in nginx.logs:
        nginx.assert_no_secret_in(log.read_text(errors="replace"))
    assert len(nginx.sink.events) == 3
    nginx.assert_no_secret_in(repr(nginx.sink.events))


async def test_a_method_override_in_a_form_body_passes_unseen(nginx: Deployment) -> None:
    # The documented gap: auth_request carries no body, so jitgate allows the POST and
    # the upstream gets the form with its _method field (the gateway refuses it).
    issued = nginx.issue(["POST /v1/charges"], api="payments")
    body = b"a=1&_method=DELETE"
    reply = await nginx.raw_request("POST", "/payments/v1/charges", issued.token, [FORM], body)
    assert reply.status == 200, reply.body
    echo = reply.json()
    assert (echo["method"], echo["body_sha256"]) == ("POST", hashlib.sha256(body).hexdigest())
    (event,) = nginx.events(EventType.ACCESS_ALLOWED)
    assert (event.data["method"], event.data["via"]) == ("POST", "nginx")

    built_in = direct(nginx)
    reply = await built_in.raw_request("POST", "/payments/v1/charges", issued.token, [FORM], body)
    built_in.assert_denied(reply, 400, "method-override", hits_before=1, api="payments")


FORM_POSTS = [
    [FORM],
    [("Content-Type", "Application/X-WWW-Form-Urlencoded; charset=utf-8")],
    [("Content-Type", "multipart/form-data; boundary=b")],
    [],  # an untyped body: Rack reads it as a form
]


@pytest.mark.parametrize("headers", FORM_POSTS)
async def test_the_documented_form_refusal_keeps_form_posts_away(
    nginx_refusing_forms: Deployment, headers: list[tuple[str, str]]
) -> None:
    front = nginx_refusing_forms
    issued = front.issue(["POST /v1/**"], api="payments")
    reply = await front.raw_request("POST", "/payments/v1/x", issued.token, headers, b"_method=x")
    assert reply.status == 415  # nginx's own answer, before jitgate is asked
    assert front.hits == []
    assert front.sink.events == []


async def test_the_documented_form_refusal_sees_chunked_untyped_bodies(
    nginx_refusing_forms: Deployment,
) -> None:
    front = nginx_refusing_forms
    issued = front.issue(["POST /v1/**"], api="payments")
    head = (
        f"POST /payments/v1/x HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {issued.token}\r\nTransfer-Encoding: chunked\r\n"
        "Connection: close\r\n\r\n"
    )
    reply = await front.raw(head.encode() + b"e\r\n_method=DELETE\r\n0\r\n\r\n")
    assert reply.status == 415
    assert front.hits == []


async def test_the_documented_form_refusal_lets_other_calls_through(
    nginx_refusing_forms: Deployment,
) -> None:
    front = nginx_refusing_forms
    issued = front.issue(["GET,POST,PUT /v1/**"], api="payments")
    json = [("Content-Type", "application/json")]
    calls = [
        ("POST", json, b'{"_method": "DELETE"}'),  # not a form
        ("POST", [], b""),  # no body at all
        ("POST", [("Content-Length", "0")], b""),
        ("PUT", [FORM], b"a=1"),  # frameworks override the method of a POST only
        ("GET", [], b""),
    ]
    for method, headers, body in calls:
        reply = await front.raw_request(method, "/payments/v1/x", issued.token, headers, body)
        assert reply.status == 200, (method, headers, reply.body)
        assert reply.json()["method"] == method
    assert len(front.hits) == len(front.events(EventType.ACCESS_ALLOWED)) == len(calls)
