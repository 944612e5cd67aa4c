"""The decision endpoints' own contract, called directly (no proxy in between).

Their allow answers carry upstream secrets by design, so these tests read them with the
raw session rather than the harness's ``call`` (which fails on any secret it sees).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from ipaddress import IPv4Network
from unittest import mock
from urllib.parse import quote

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict
from pydantic import ValidationError
from yarl import URL

from jitgate.audit.events import EventType
from jitgate.config import Settings
from jitgate.domain.models import Api, Injection, InjectionKind
from jitgate.errors import InvalidInput
from jitgate.gateway.app import create_gateway_server
from jitgate.gateway.authz import DecisionEndpoints
from jitgate.gateway.bodies import MAX_FORM_SIZE
from jitgate.secrets import Secret
from jitgate.services import directory
from tests.gateway.conftest import Reply, serve
from tests.integrations.conftest import Deployment

pytestmark = pytest.mark.anyio


async def ask(
    jg: Deployment,
    path: str,
    headers: Mapping[str, str],
    *,
    method: str = "GET",
    port: int = 0,
    data: bytes | None = None,
) -> Reply:
    url = URL(f"http://127.0.0.1:{port or jg.gateway_port}{path}", encoded=True)
    async with jg.session.request(method, url, headers=headers, data=data) as answer:
        return Reply(answer.status, CIMultiDict(answer.headers), await answer.read())


def nginx_headers(method: str, target: str, token: str | None) -> dict[str, str]:
    headers = {"X-Original-Method": method, "X-Original-URI": target}
    return headers | ({"Authorization": f"Bearer {token}"} if token else {})


async def test_nginx_allow_carries_the_credential_and_the_checked_target(jg: Deployment) -> None:
    issued = jg.issue(["GET /v1/**"], api="payments")
    reply = await ask(
        jg, "/authz/nginx", nginx_headers("GET", "/payments/v1/a%61?x=1", issued.token)
    )
    assert reply.status == 200
    assert reply.headers["Authorization"] == f"Bearer {jg.secrets['payments']}"
    assert reply.headers["X-Jitgate-Target"] == "/v1/a%61?x=1"
    assert reply.headers["Cache-Control"] == "no-store"  # never a cached decision
    assert reply.body == b""


async def test_nginx_allow_of_a_query_credential_replaces_the_callers(jg: Deployment) -> None:
    issued = jg.issue(["GET /v1/**"], api="maps")
    target = "/maps/v1/t?z=1&key=mine&k%65y=again"
    reply = await ask(jg, "/authz/nginx", nginx_headers("GET", target, issued.token))
    assert reply.status == 200
    assert "Authorization" not in reply.headers
    secret = quote(jg.secrets["maps"], safe="")
    assert reply.headers["X-Jitgate-Target"] == f"/v1/t?z=1&key={secret}"


async def test_nginx_denials_are_401_or_403_carrying_the_gateways_answer(jg: Deployment) -> None:
    issued = jg.issue(["GET /v1/**"], api="payments")
    cases = [
        (nginx_headers("GET", "/payments/v1/../x", issued.token), 403, 400, "ambiguous-path"),
        (nginx_headers("GET", "/payments/v1/x", None), 401, 401, "token-missing"),
        (nginx_headers("POST", "/payments/v1/x", issued.token), 403, 403, "out-of-scope"),
        (nginx_headers("get", "/payments/v1/x", issued.token), 403, 405, "method-not-allowed"),
        ({"X-Original-Method": "GET"}, 403, 400, "original-request-unknown"),
    ]
    for headers, status, real, code in cases:
        reply = await ask(jg, "/authz/nginx", headers)
        assert reply.status == status, code
        assert reply.headers["X-Jitgate-Status"] == str(real)
        relayed = json.loads(reply.headers["X-Jitgate-Problem"])
        assert relayed == reply.json()
        assert (relayed["status"], relayed["code"]) == (real, code)
        event = jg.last_event
        assert event.type is EventType.ACCESS_DENIED
        assert (event.data["reason"], event.data["status"], event.data["via"]) == (
            code,
            real,
            "nginx",
        )


async def test_two_original_targets_are_refused(jg: Deployment) -> None:
    issued = jg.issue(["GET /v1/**"], api="payments")
    url = URL(f"http://127.0.0.1:{jg.gateway_port}/authz/forward")
    headers = CIMultiDict(
        [
            ("Authorization", f"Bearer {issued.token}"),
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Uri", "/payments/v1/ok"),
            ("X-Forwarded-Uri", "/payments/v2/admin"),
        ]
    )
    async with jg.session.get(url, headers=headers) as answer:
        reply = Reply(answer.status, CIMultiDict(answer.headers), await answer.read())
    jg.assert_denied(reply, 400, "original-request-unknown", api=None)


async def test_envoy_removes_the_grant_token_when_the_credential_is_another_header(
    jg: Deployment,
) -> None:
    base = f"http://127.0.0.1:{jg.upstream_port}"
    keyed = Api("keyed", base, Injection(InjectionKind.HEADER, "X-Api-Key", "{secret}"), "dev")
    directory.add_api(jg.ctx, None, keyed, Secret("kk_secret_value"))
    issued = jg.issue(["GET /v1/**"], api="keyed")
    auth = {"Authorization": f"Bearer {issued.token}"}
    reply = await ask(jg, "/authz/envoy/keyed/v1/x", auth)
    assert reply.status == 200
    assert reply.headers["x-api-key"] == "kk_secret_value"
    assert reply.headers["x-envoy-auth-headers-to-remove"] == "authorization"
    payments = jg.issue(["GET /v1/**"], api="payments")
    auth = {"Authorization": f"Bearer {payments.token}"}
    reply = await ask(jg, "/authz/envoy/payments/v1/x", auth, method="HEAD")
    assert reply.status == 200
    assert reply.headers["Authorization"] == f"Bearer {jg.secrets['payments']}"
    assert "x-envoy-auth-headers-to-remove" not in reply.headers


async def test_envoy_refuses_query_credentials(jg: Deployment) -> None:
    issued = jg.issue(["GET /v1/**"], api="maps")
    reply = await ask(jg, "/authz/envoy/maps/v1/x", {"Authorization": f"Bearer {issued.token}"})
    jg.assert_denied(reply, 501, "injection-unsupported", api="maps")


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def test_envoy_refuses_a_form_body_it_cannot_see_whole(jg: Deployment) -> None:
    issued = jg.issue(["POST /v1/**"], api="payments")
    auth = {"Authorization": f"Bearer {issued.token}"}
    path = "/authz/envoy/payments/v1/x"
    # Envoy cut the body short (allow_partial_message: true): what follows is unknown.
    partial = auth | FORM | {"x-envoy-auth-partial-body": "true"}
    reply = await ask(jg, path, partial, method="POST", data=b"a=1")
    jg.assert_denied(reply, 413, "body-too-large", api="payments")
    assert "Authorization" not in reply.headers
    # A form over the gateway's form limit is refused as the gateway refuses it.
    big = b"a=" + b"x" * MAX_FORM_SIZE
    reply = await ask(jg, path, auth | FORM, method="POST", data=big)
    jg.assert_denied(reply, 413, "body-too-large", api="payments")
    assert jg.last_event.data["via"] == "envoy"
    # Whole, within the limit and without _method: allowed.
    whole = auth | FORM | {"x-envoy-auth-partial-body": "false"}
    reply = await ask(jg, path, whole, method="POST", data=b"a=1&method=DELETE")
    assert reply.status == 200
    assert reply.headers["Authorization"] == f"Bearer {jg.secrets['payments']}"


async def test_only_envoys_check_carries_the_body(jg: Deployment) -> None:
    # nginx and ForwardAuth never send the caller's body; whatever comes with their check
    # is not the caller's and is not read as a form.
    issued = jg.issue(["POST /v1/**"], api="payments")
    nginx = nginx_headers("POST", "/payments/v1/x", issued.token) | FORM
    reply = await ask(jg, "/authz/nginx", nginx, method="POST", data=b"_method=DELETE")
    assert reply.status == 200
    assert jg.last_event.type is EventType.ACCESS_ALLOWED


async def test_an_allow_is_refused_while_the_audit_cannot_record_it(jg: Deployment) -> None:
    issued = jg.issue(["GET /v1/**"], api="payments")
    jg.sink.healthy = False
    reply = await ask(jg, "/authz/envoy/payments/v1/x", {"Authorization": f"Bearer {issued.token}"})
    jg.assert_denied(reply, 503, "audit-unavailable", api=None)
    assert "Authorization" not in reply.headers


async def test_unknown_decision_paths_are_not_found_and_never_proxied(jg: Deployment) -> None:
    issued = jg.issue(["GET /v1/**"], api="payments")
    auth = {"Authorization": f"Bearer {issued.token}"}
    for path in ("/authz", "/authz/", "/authz/other", "/authz/envoyx/payments/v1/x", "/authz?x"):
        reply = await ask(jg, path, auth)
        assert (reply.status, reply.code) == (404, "not-found"), path
    assert jg.sink.events == []
    assert jg.hits == []


async def test_the_endpoints_are_off_unless_enabled(jg: Deployment) -> None:
    issued = jg.issue(["GET /v1/**"], api="payments")
    runner, port = await serve(create_gateway_server(jg.proxy))  # no decision endpoints
    try:
        reply = await ask(
            jg, "/authz/nginx", nginx_headers("GET", "/payments/v1/x", issued.token), port=port
        )
    finally:
        await runner.cleanup()
    assert (reply.status, reply.code) == (404, "not-found")
    assert "Authorization" not in reply.headers
    assert jg.sink.events == []


async def test_callers_outside_allow_from_get_nothing(jg: Deployment) -> None:
    issued = jg.issue(["GET /v1/**"], api="payments")
    elsewhere = DecisionEndpoints(jg.proxy, allow_from=[IPv4Network("10.0.0.0/8")])
    runner, port = await serve(create_gateway_server(jg.proxy, elsewhere))
    try:
        reply = await ask(
            jg, "/authz/nginx", nginx_headers("GET", "/payments/v1/x", issued.token), port=port
        )
    finally:
        await runner.cleanup()
    assert (reply.status, reply.code) == (404, "not-found")
    assert "Authorization" not in reply.headers
    assert jg.sink.events == []


def test_no_api_can_be_named_after_the_decision_endpoints(jg: Deployment) -> None:
    api = Api("authz", "http://127.0.0.1:9", Injection(InjectionKind.HEADER), "dev")
    with pytest.raises(InvalidInput, match="reserved"):
        directory.add_api(jg.ctx, None, api, Secret("s"))


def test_settings_enable_the_endpoints_for_named_networks() -> None:
    settings = Settings(gateway={"decisions": {"enabled": True, "allow_from": ["10.0.0.5/32"]}})
    assert settings.gateway.decisions.enabled
    assert settings.gateway.decisions.allow_from == [IPv4Network("10.0.0.5/32")]
    assert not Settings().gateway.decisions.enabled  # off by default
    with pytest.raises(ValidationError):
        Settings(gateway={"decisions": {"allow_from": ["10.0.0.5/33"]}})


@pytest.mark.parametrize(
    ("peer", "allowed"),
    [("127.0.0.1", True), ("::ffff:127.0.0.1", True), ("::1", True), ("10.0.0.9", False)],
)
def test_allow_from_reads_the_peer_address(jg: Deployment, peer: str, allowed: bool) -> None:
    decisions = DecisionEndpoints(jg.proxy, allow_from=Settings().gateway.decisions.allow_from)
    transport = mock.Mock()
    transport.get_extra_info.return_value = (peer, 40000)
    request = make_mocked_request("GET", "/authz/nginx", transport=transport)
    assert request.remote == peer
    assert decisions.caller_allowed(request) is allowed
