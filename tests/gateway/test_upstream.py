"""How the gateway treats the upstream's answers: passed back, never followed, scrubbed."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from jitgate.audit.events import EventType
from jitgate.gateway.app import create_gateway_server
from jitgate.gateway.proxy import Proxy
from tests.gateway.conftest import Harness, serve

pytestmark = pytest.mark.anyio


async def test_redirects_are_passed_back_and_never_followed(gw: Harness) -> None:
    token = gw.issue(api="echo").token
    reply = await gw.call("GET", "/echo/v1/redirect", token)
    assert reply.status == 302
    assert reply.headers["Location"] == "/h/landing"
    assert [h.target for h in gw.hits] == ["/h/v1/redirect"]  # /h/landing was never asked for
    (event,) = gw.events(EventType.ACCESS_ALLOWED)
    assert event.data["status"] == 302


@pytest.mark.parametrize("api", ["echo", "echoq", "echob"])
async def test_a_secret_reflected_into_response_headers_is_scrubbed(gw: Harness, api: str) -> None:
    """The upstream copies what it received into Location and other headers.

    ``gw.call`` already fails on any spelling of a secret in the reply (raw,
    percent-encoded, inside the basic-auth value); here we also check the headers
    survive with the secret replaced.
    """
    token = gw.issue(api=api).token
    reply = await gw.call("GET", f"/{api}/v1/leak?x=1", token)
    assert reply.status == 302
    assert reply.headers["Location"].startswith("http://elsewhere.test/")
    reflected = " ".join(
        reply.headers[name]
        for name in ("Location", "X-Seen-Api-Key", "X-Seen-Authorization", "Content-Location")
    )
    assert "[redacted]" in reflected


async def test_hop_by_hop_response_headers_are_not_passed_back(gw: Harness) -> None:
    # The upstream really sends them (asked directly, without the gateway) ...
    echo_base = gw.view.upstreams["echo"].api.base_url
    async with gw.session.get(f"{echo_base}/hop") as direct:
        assert direct.headers["X-Internal"] == "private"
        assert direct.headers["Proxy-Authenticate"] == "Basic"
    # ... and the gateway drops them, and those its Connection header names.
    reply = await gw.call("GET", "/echo/v1/hop", gw.issue(api="echo").token)
    assert reply.status == 200
    assert reply.body == b"hop"
    assert reply.headers["X-Upstream"] == "echo"
    for name in ("X-Internal", "Keep-Alive", "Proxy-Authenticate", "Upgrade"):
        assert name not in reply.headers, f"{name} was passed back"


async def test_upstream_down_is_a_502_problem(gw: Harness) -> None:
    issued = gw.issue(api="down")
    reply = await gw.call("GET", "/down/v1/items", issued.token)
    assert (reply.status, reply.code) == (502, "upstream-unreachable")
    assert "sk_down" not in reply.body.decode()
    (event,) = gw.events(EventType.ACCESS_ALLOWED)  # allowed by the grant, failed upstream
    assert event.grant == issued.grant.id
    assert event.data["status"] == 502
    assert event.data["error"] == "upstream-unreachable"


async def test_upstream_too_slow_is_a_504_problem(gw: Harness) -> None:
    impatient = Proxy(gw.enforcer, gw.sink, gw.clock, connect_timeout=1.0, timeout=0.2)
    await impatient.start()
    runner, port = await serve(create_gateway_server(impatient))
    try:
        token = gw.issue(api="echo").token
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"http://127.0.0.1:{port}/echo/v1/hang",
                headers={"Authorization": f"Bearer {token}"},
            ) as response,
        ):
            body = await response.json(content_type=None)
            assert response.status == 504
            assert body["code"] == "upstream-timeout"
        assert gw.events(EventType.ACCESS_ALLOWED)[-1].data["error"] == "upstream-timeout"
    finally:
        gw.echo.release.set()
        await runner.cleanup()
        await impatient.close()


@pytest.mark.parametrize("api", ["echo", "echob"])
async def test_upstream_error_status_passes_back_with_a_scrubbed_reason(
    gw: Harness, api: str
) -> None:
    reply = await gw.call("GET", f"/{api}/v1/teapot", gw.issue(api=api).token)
    assert reply.status == 418
    assert reply.body == b"no coffee"
    assert reply.reason.startswith("Bad key")


@pytest.mark.parametrize("api", ["echo", "echoq", "echob"])
async def test_a_secret_reflected_into_the_response_body_is_scrubbed(gw: Harness, api: str) -> None:
    """An upstream that echoes its request (httpbin /headers): the body is overwritten.

    ``gw.call`` fails on any spelling of a secret in the reply; the mask keeps lengths.
    """
    gw.echo.masks = []  # this upstream reflects what it received, unmasked
    reply = await gw.call("GET", f"/{api}/v1/items", gw.issue(api=api).token)
    assert reply.status == 200
    assert int(reply.headers["Content-Length"]) == len(reply.body)
    assert "*" * 16 in reply.body.decode()  # every spelling of these secrets is longer


async def test_gateway_healthz(gw: Harness) -> None:
    reply = await gw.call("GET", "/healthz")
    assert reply.status == 200
    assert reply.json() == {"status": "ok"}
    assert gw.hits == []


async def test_a_caller_that_disconnects_mid_call_is_still_audited(gw: Harness) -> None:
    token = gw.issue(api="echo").token
    before = len(gw.events(EventType.ACCESS_ALLOWED))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(
        f"GET /echo/v1/hang HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    )
    await writer.drain()
    for _ in range(100):  # until the call has reached the upstream
        if any(hit.target.endswith("/hang") for hit in gw.hits):
            break
        await asyncio.sleep(0.01)
    writer.close()  # the caller goes away before the upstream answers
    await writer.wait_closed()
    gw.echo.release.set()
    for _ in range(200):
        if len(gw.events(EventType.ACCESS_ALLOWED)) > before:
            break
        await asyncio.sleep(0.01)
    event = gw.events(EventType.ACCESS_ALLOWED)[-1]
    assert len(gw.events(EventType.ACCESS_ALLOWED)) == before + 1
    assert event.data["path"] == "/v1/hang"
    assert event.data["error"] == "client-disconnected"
    del reader
