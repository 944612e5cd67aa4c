"""Allowed calls: the secret is injected, the caller's credential is not, bytes flow both ways."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections.abc import AsyncIterator

import pytest

from jitgate.audit.events import EventType
from tests.gateway.conftest import Harness

pytestmark = pytest.mark.anyio


async def test_allowed_call_reaches_upstream_with_injected_secret(gw: Harness) -> None:
    issued = gw.issue(["GET /v1/**"])
    reply = await gw.call("GET", "/demo/v1/items/7?b=2&a=1&a=3&x=%20y%2B", issued.token)

    # The demo upstream answers 200 only when it receives its own secret key.
    assert reply.status == 200, reply.body
    echo = reply.json()
    assert echo["method"] == "GET"
    assert echo["path"] == "/v1/items/7"
    assert echo["query"] == "b=2&a=1&a=3&x=%20y%2B"  # byte for byte, order and escapes kept
    assert issued.token not in reply.body.decode()
    assert reply.headers["Content-Type"].startswith("application/json")
    assert [(h.upstream, h.method, h.target) for h in gw.hits] == [
        ("demo", "GET", "/v1/items/7?b=2&a=1&a=3&x=%20y%2B")
    ]


async def test_allowed_call_is_audited_with_grant_and_status(gw: Harness) -> None:
    issued = gw.issue(["GET /v1/**"])
    reply = await gw.call("GET", "/demo/v1/items", issued.token)
    assert reply.status == 200
    (event,) = gw.events(EventType.ACCESS_ALLOWED)
    assert event.principal == "alice"
    assert event.actor == "alice"
    assert event.api == "demo"
    assert event.grant == issued.grant.id
    assert event.data["method"] == "GET"
    assert event.data["path"] == "/v1/items"
    assert event.data["status"] == 200
    assert "error" not in event.data
    assert gw.secrets["demo"] not in repr(event)
    assert issued.token not in repr(event)


async def test_callers_authorization_is_not_forwarded(gw: Harness) -> None:
    issued = gw.issue(api="echo")
    reply = await gw.call("GET", "/echo/v1/me", issued.token)
    assert reply.status == 200
    headers = reply.json()["headers"]
    names = [name.lower() for name, _ in headers]
    assert "authorization" not in names
    assert all(issued.token not in value for _, value in headers)
    assert [v for n, v in headers if n.lower() == "x-api-key"] == ["<echo>"]


async def test_post_body_reaches_the_demo_upstream(gw: Harness) -> None:
    issued = gw.issue(["POST /v1/items"])
    reply = await gw.call(
        "POST",
        "/demo/v1/items",
        issued.token,
        data=b'{"name": "widget"}',
        headers={"Content-Type": "application/json"},
    )
    assert reply.status == 200
    echo = reply.json()
    assert echo["method"] == "POST"
    assert echo["body"] == '{"name": "widget"}'
    assert echo["headers"]["Content-Type"] == "application/json"


async def test_large_post_body_with_content_length_is_forwarded_intact(gw: Harness) -> None:
    issued = gw.issue(["POST /v1/items"], api="echo")
    body = secrets.token_bytes(320_000)  # several of the proxy's 64 kB chunks
    reply = await gw.call("POST", "/echo/v1/items", issued.token, data=body)
    assert reply.status == 200
    echo = reply.json()
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


async def test_post_body_is_streamed_chunked(gw: Harness) -> None:
    issued = gw.issue(["POST /v1/upload"], api="echo")
    parts = [bytes([65 + i]) * 50_000 for i in range(6)]

    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    reply = await gw.call("POST", "/echo/v1/upload", issued.token, data=body())
    assert reply.status == 200
    echo = reply.json()
    assert echo["body_length"] == sum(map(len, parts))
    assert echo["body_sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()
    headers = {name.lower(): value for name, value in echo["headers"]}
    assert headers.get("transfer-encoding") == "chunked" or "content-length" in headers


async def test_response_status_and_headers_pass_back(gw: Harness) -> None:
    issued = gw.issue(api="echo")
    reply = await gw.call("GET", "/echo/v1/anything", issued.token)
    assert reply.status == 200
    assert reply.headers["X-Upstream"] == "echo"
    assert reply.headers["Cache-Control"] == "no-store"
    assert reply.headers["Content-Type"].startswith("application/json")


async def test_head_is_admitted_by_a_get_grant(gw: Harness) -> None:
    issued = gw.issue(["GET /v1/**"])
    reply = await gw.call("HEAD", "/demo/v1/items", issued.token)
    assert reply.status == 200
    assert reply.body == b""
    assert [(h.method, h.target) for h in gw.hits] == [("HEAD", "/v1/items")]


async def test_the_matched_raw_path_is_forwarded_unchanged(gw: Harness) -> None:
    # %41 is "A": the scope matches the decoded segment, the upstream gets the raw bytes.
    issued = gw.issue(["GET /v1/A/*"])
    reply = await gw.raw_request("GET", "/demo/v1/%41/caf%C3%A9", issued.token)
    assert reply.status == 200, reply.body
    assert reply.json()["path"] == "/v1/%41/caf%C3%A9"
    assert [h.target for h in gw.hits] == ["/v1/%41/caf%C3%A9"]


async def test_api_root_is_forwarded_as_slash(gw: Harness) -> None:
    issued = gw.issue(["GET /"])
    reply = await gw.call("GET", "/demo", issued.token)
    assert reply.status == 200
    assert reply.json()["path"] == "/"


async def test_expect_100_continue_is_answered_once_the_call_is_allowed(gw: Harness) -> None:
    """The client sends its body only after "100 Continue"; the upstream never sees Expect."""
    token = gw.issue(["POST /v1/items"], api="echo").token
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(
            (
                "POST /echo/v1/items HTTP/1.1\r\nHost: gw\r\n"
                f"Authorization: Bearer {token}\r\nContent-Length: 5\r\n"
                "Expect: 100-continue\r\nConnection: close\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        writer.write(b"hello")
        await writer.drain()
        final = await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()
    assert final.startswith(b"HTTP/1.1 200 ")
    echo = json.loads(final.partition(b"\r\n\r\n")[2])
    assert echo["body_length"] == 5
    assert "expect" not in {name.lower() for name, _ in echo["headers"]}


async def test_expect_100_continue_gets_the_denial_without_the_body(gw: Harness) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(
            b"POST /demo/v1/items HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        # The answer comes at once; the connection then lingers for the unsent body.
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        length = int(head.lower().partition(b"content-length: ")[2].partition(b"\r\n")[0])
        body = await asyncio.wait_for(reader.readexactly(length), timeout=5)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 401 ")  # no "100 Continue" before it
    assert json.loads(body)["code"] == "token-missing"
    assert gw.hits == []


async def test_a_client_library_using_expect_100_continue(gw: Harness) -> None:
    token = gw.issue(["POST /v1/items"]).token
    async with gw.session.post(
        gw.url("/demo/v1/items"),
        data=b"x" * 2048,
        expect100=True,
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        assert response.status == 200
        echo = await response.json()
    assert echo["body"] == "x" * 2048
