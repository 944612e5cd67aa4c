"""Traefik's ForwardAuth contract with docs/integrations/traefik.yml, at header level.

Traefik itself is not packaged here: :class:`ForwardAuth` does what its ForwardAuth
middleware does with that file's settings — ask ``address`` with the caller's headers
plus ``X-Forwarded-Method``/``-Uri``/``-Host``/``-Proto`` (its own, never the caller's
copies: ``trustForwardHeader: false``); on 2xx remove each ``authResponseHeaders`` header
from the request and copy the answer's, strip the router's prefix and forward; otherwise
answer the caller with the auth server's status, headers and body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from multidict import CIMultiDict
from yarl import URL

from jitgate.audit.events import EventType
from jitgate.services import grants
from tests.gateway.conftest import Reply
from tests.integrations.conftest import Deployment, direct, example, headers_seen

pytestmark = pytest.mark.anyio

HOP_BY_HOP = {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"}
FORWARDED = ("X-Forwarded-Method", "X-Forwarded-Uri", "X-Forwarded-Host", "X-Forwarded-Proto")


@dataclass
class ForwardAuth:
    jg: Deployment
    address: str
    response_headers: list[str]
    strip: str
    service: str

    @classmethod
    def from_example(cls, jg: Deployment) -> ForwardAuth:
        text = example(
            "traefik.yml",
            {
                "GATEWAY": f"127.0.0.1:{jg.gateway_port}",
                "PAYMENTS_UPSTREAM": f"http://127.0.0.1:{jg.upstream_port}",
            },
        )
        http: dict[str, Any] = yaml.safe_load(text)["http"]
        router = http["routers"]["payments"]
        assert router["middlewares"][0] == "jitgate"  # jitgate decides before anything else
        auth = http["middlewares"]["jitgate"]["forwardAuth"]
        assert auth["trustForwardHeader"] is False
        (prefix,) = http["middlewares"][router["middlewares"][1]]["stripPrefix"]["prefixes"]
        (server,) = http["services"][router["service"]]["loadBalancer"]["servers"]
        return cls(jg, auth["address"], auth["authResponseHeaders"], prefix, server["url"])

    async def call(
        self,
        method: str,
        target: str,
        token: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        data: bytes | None = None,
    ) -> Reply:
        sent: CIMultiDict[str] = CIMultiDict(headers or [])
        if token is not None:
            sent.add("Authorization", f"Bearer {token}")
        ask: CIMultiDict[str] = CIMultiDict(
            (k, v) for k, v in sent.items() if k.lower() not in HOP_BY_HOP and k not in FORWARDED
        )
        ask.update(zip(FORWARDED, (method, target, "apis.example", "http"), strict=True))
        session = self.jg.session
        async with session.get(URL(self.address), headers=ask, allow_redirects=False) as auth:
            answer = Reply(auth.status, CIMultiDict(auth.headers), await auth.read())
        if not 200 <= answer.status < 300:
            self.jg.assert_no_secret(answer)
            return answer
        for name in self.response_headers:
            sent.popall(name, None)
            for value in answer.headers.getall(name, []):
                sent.add(name, value)
        assert target.startswith(self.strip + "/")
        url = URL(self.service + target[len(self.strip) :], encoded=True)
        async with session.request(method, url, headers=sent, data=data) as upstream:
            reply = Reply(upstream.status, CIMultiDict(upstream.headers), await upstream.read())
        self.jg.assert_no_secret(reply)
        return reply


@pytest.fixture
def traefik(jg: Deployment) -> ForwardAuth:
    return ForwardAuth.from_example(jg)


async def test_the_example_points_at_the_forward_endpoint(traefik: ForwardAuth) -> None:
    assert traefik.address == f"http://127.0.0.1:{traefik.jg.gateway_port}/authz/forward"
    assert "Authorization" in traefik.response_headers


async def test_allowed_call_reaches_upstream_with_credential_not_token(
    traefik: ForwardAuth,
) -> None:
    jg = traefik.jg
    issued = jg.issue(["GET /v1/**"], api="payments")
    reply = await traefik.call("GET", "/payments/v1/charges/7?b=2", issued.token)
    assert reply.status == 200, reply.body
    assert reply.json()["path"] == "/v1/charges/7"
    assert reply.json()["raw_query"] == "b=2"
    assert headers_seen(reply)["authorization"] == "Bearer <payments>"
    assert issued.token not in reply.body.decode()
    (event,) = jg.events(EventType.ACCESS_ALLOWED)
    assert (event.api, event.grant) == ("payments", issued.grant.id)
    assert event.data["via"] == "forward"


async def test_out_of_scope_is_refused_as_by_the_gateway(traefik: ForwardAuth) -> None:
    jg = traefik.jg
    issued = jg.issue(["GET /v1/**"], api="payments")
    through = await traefik.call("PUT", "/payments/v1/charges/7", issued.token, data=b"{}")
    jg.assert_denied(through, 403, "out-of-scope", api="payments")
    built_in = await direct(jg).call("PUT", "/payments/v1/charges/7", issued.token, data=b"{}")
    jg.assert_denied(built_in, 403, "out-of-scope", api="payments")
    assert through.json() == built_in.json()


async def test_a_revoked_grant_is_refused_on_the_next_call(traefik: ForwardAuth) -> None:
    jg = traefik.jg
    issued = jg.issue(["GET /v1/**"], api="payments")
    assert (await traefik.call("GET", "/payments/v1/charges", issued.token)).status == 200
    grants.revoke(jg.ctx, jg.alice, issued.grant.id, "")  # released by the grantee
    reply = await traefik.call("GET", "/payments/v1/charges", issued.token)
    jg.assert_denied(reply, 403, "grant-revoked", hits_before=1, api="payments")


@pytest.mark.parametrize(
    ("target", "headers", "status", "code"),
    [
        ("/payments/v1/%2e%2e/admin", [], 400, "ambiguous-path"),
        ("/payments/v1%2Fcharges", [], 400, "ambiguous-path"),
        ("/payments/v1/charges", [("X-HTTP-Method", "DELETE")], 400, "method-override"),
        ("/payments/v1/charges", [("Authorization", "Bearer x")], 401, "token-ambiguous"),
    ],
)
async def test_hostile_requests_are_refused(
    traefik: ForwardAuth, target: str, headers: list[tuple[str, str]], status: int, code: str
) -> None:
    issued = traefik.jg.issue(["GET /v1/**"], api="payments")
    reply = await traefik.call("GET", target, issued.token, headers)
    traefik.jg.assert_denied(reply, status, code, api="payments")


async def test_a_forged_original_request_is_overwritten(traefik: ForwardAuth) -> None:
    # The caller names an in-scope target; Traefik sends the real one.
    issued = traefik.jg.issue(["GET /v1/**"], api="payments")
    forged = [("X-Forwarded-Method", "GET"), ("X-Forwarded-Uri", "/payments/v1/ok")]
    reply = await traefik.call("DELETE", "/payments/v1/charges", issued.token, forged)
    traefik.jg.assert_denied(reply, 403, "out-of-scope", api="payments")


async def test_query_parameter_injection_is_refused(traefik: ForwardAuth) -> None:
    jg = traefik.jg
    issued = jg.issue(["GET /v1/**"], api="maps")
    headers = {"Authorization": f"Bearer {issued.token}"}
    headers |= {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/maps/v1/tiles"}
    async with jg.session.get(URL(traefik.address), headers=headers) as answer:
        reply = Reply(answer.status, CIMultiDict(answer.headers), await answer.read())
    jg.assert_denied(reply, 501, "injection-unsupported", api="maps")


async def test_a_method_override_in_a_form_body_passes_unseen(traefik: ForwardAuth) -> None:
    # The documented gap: ForwardAuth sends headers only, so jitgate allows the POST and
    # the upstream gets the form with its _method field (the gateway refuses it).
    jg = traefik.jg
    issued = jg.issue(["POST /v1/charges"], api="payments")
    form = [("Content-Type", "application/x-www-form-urlencoded")]
    body = b"a=1&_method=DELETE"
    reply = await traefik.call("POST", "/payments/v1/charges", issued.token, form, body)
    assert reply.status == 200, reply.body
    echo = reply.json()
    assert (echo["method"], echo["body_length"]) == ("POST", len(body))
    (event,) = jg.events(EventType.ACCESS_ALLOWED)
    assert (event.data["method"], event.data["via"]) == ("POST", "forward")

    built_in = direct(jg)
    reply = await built_in.raw_request("POST", "/payments/v1/charges", issued.token, form, body)
    built_in.assert_denied(reply, 400, "method-override", hits_before=1, api="payments")
