"""The hostile-traffic suite, part two: what reaches the upstream, what comes back, limits.

Part one (:mod:`tests.gateway.test_hostile_traffic`) has the requests the gateway
refuses. Here: the headers a caller must not pass to the upstream, secrets in every
output of a full run, upstream addresses that are refused, timeouts, and the body limit.
A refusal that happens after the call was allowed and forwarding began (a body that
breaks the limit or stalls mid-stream, an upstream that fails) is audited as
``access.allowed`` with the upstream call's outcome in ``data.error`` — the grant did
admit the call; every refusal made before the upstream is contacted is ``access.denied``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from prometheus_client import REGISTRY, generate_latest
from sqlalchemy import text

from jitgate.audit.events import EventType
from jitgate.domain.models import Api, Injection, InjectionKind
from jitgate.errors import InvalidInput
from jitgate.gateway.app import create_gateway_server
from jitgate.gateway.proxy import Proxy
from jitgate.secrets import Secret
from jitgate.services import directory
from tests.gateway.conftest import Harness, Reply, closed_port, serve
from tests.gateway.conftest import _parse_raw as parse_raw
from tests.gateway.test_hostile_traffic import wire

pytestmark = pytest.mark.anyio


def _echoed(reply_json: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in reply_json["headers"] if k.lower() == name.lower()]


# what the caller must not pass on -----------------------------------------------------

INTERNAL = [
    "X-Forwarded-For",
    "X-Forwarded-Host",
    "X-Forwarded-Proto",
    "Forwarded",
    "X-Real-IP",
    "X-Original-URL",  # Symfony/IIS route by it: a path the scope never saw
    "X-Rewrite-URL",
    "X-Original-Method",
    "X-Jitgate-Principal",
]


@pytest.mark.parametrize("name", INTERNAL)
async def test_caller_supplied_internal_headers_are_dropped(gw: Harness, name: str) -> None:
    reply = await gw.raw(
        wire(
            "GET",
            "/echo/v1/x",
            [
                ("Authorization", f"Bearer {gw.issue(api='echo').token}"),
                (name, "/v1/admin"),
                ("X-Kept", "yes"),
            ],
        )
    )
    assert reply.status == 200
    assert _echoed(reply.json(), name) == []
    assert _echoed(reply.json(), "X-Kept") == ["yes"]


CREDENTIAL_TRICKS = [
    # (API, headers, the credential header the upstream must get exactly once)
    ("echo", [("Connection", "X-Api-Key")], "X-Api-Key"),
    ("echo", [("Connection", "close, x-api-key"), ("X-Api-Key", "mine")], "X-Api-Key"),
    ("echo", [("X-Api-Key", "mine"), ("X-Api-Key", "mine-too")], "X-Api-Key"),
    ("echob", [("Connection", "Authorization")], "Authorization"),
    ("echob", [("Proxy-Authorization", "Basic bWluZQ==")], "Authorization"),
]


@pytest.mark.parametrize(("api", "headers", "credential"), CREDENTIAL_TRICKS)
async def test_the_injected_credential_is_set_exactly_once(
    gw: Harness, api: str, headers: list[tuple[str, str]], credential: str
) -> None:
    token = gw.issue(api=api).token
    reply = await gw.raw(
        wire("GET", f"/{api}/v1/x", [("Authorization", f"Bearer {token}"), *headers])
    )
    assert reply.status == 200
    (value,) = _echoed(reply.json(), credential)
    assert value in ("<echo>", "Basic <echob-basic>")
    assert _echoed(reply.json(), "Proxy-Authorization") == []


async def test_demo_upstream_accepts_only_its_injected_key_whatever_connection_names(
    gw: Harness,
) -> None:
    token = gw.issue().token
    reply = await gw.raw(
        wire(
            "GET",
            "/demo/v1/x",
            [("Authorization", f"Bearer {token}"), ("Connection", "authorization, close")],
        )
    )
    assert reply.status == 200  # the demo upstream answers 401 without its secret


# secrets --------------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["echo", "echoq", "echob"])
@pytest.mark.parametrize("path", ["leak", "teapot", "items", "redirect"])
async def test_an_upstream_reflecting_its_credential_never_reveals_it(
    gw: Harness, api: str, path: str
) -> None:
    """Location, other headers, the reason phrase and the body: ``gw.call`` fails on any
    spelling of any secret in the reply; the echo here reflects unmasked."""
    gw.echo.masks = []
    reply = await gw.call("GET", f"/{api}/v1/{path}?q=1", gw.issue(api=api).token)
    assert reply.status in (200, 302, 418)
    assert [h.target.rpartition("/")[2].partition("?")[0] for h in gw.hits] == [path]


async def test_the_secret_is_in_no_output_of_a_full_run(
    gw: Harness, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """Every kind of call, then a grep of every answer, log record, metric and audit row
    — and of the database file itself (secrets are stored encrypted)."""
    caplog.set_level(logging.DEBUG)
    gw.echo.masks = []  # the echo reflects what it received, unmasked
    answers: list[bytes] = []
    for api in ("demo", "echo", "echoq", "echob", "down"):
        token = gw.issue(api=api).token
        for path in ("items", "leak", "teapot", "redirect", "..%2f"):
            for sent in (
                wire("GET", f"/{api}/v1/{path}?a=1", [("Authorization", f"Bearer {token}")]),
                wire("POST", f"/{api}/v1/{path}", [("Authorization", f"Bearer {token}")], b"x"),
                wire("GET", f"/{api}/v1/{path}", [("Authorization", "Bearer forged")]),
            ):
                answers.append(repr(await gw.raw(sent)).encode())
    answers.append(repr(await gw.raw(wire("GET", "/echo/v1/x", [("X-Big", "a" * 9000)]))).encode())

    with gw.store.transaction() as tx:  # what the gateway's audit writer would persist
        tx.audit.append(gw.sink.events)
    with gw.store.read() as tx:
        rows = tx.connection.execute(text("SELECT * FROM audit_events")).fetchall()
    assert len(rows) >= len(gw.sink.events) > 60
    database = await asyncio.to_thread(Path(str(gw.store.engine.url.database)).read_bytes)
    # aiohttp.access is shared with the test's upstreams, which log the query they receive
    # (the echoq secret); jitgate turns that logger down to WARNING (jitgate.logs).
    records = [r for r in caplog.records if r.name != "aiohttp.access"]
    assert any(r.name.startswith("jitgate.") for r in records)  # the gateway's own logs
    outputs = {
        "answers": b"\n".join(answers),
        "audit": repr(rows).encode(),
        "logs": "\n".join(f"{r.getMessage()} {r.exc_info}" for r in records).encode(),
        "metrics": generate_latest(REGISTRY),
        "database": database,
    }
    for where, data in outputs.items():
        for form in gw.secret_forms:
            assert form.encode() not in data, f"an upstream secret is in the {where}"


# upstream addresses ---------------------------------------------------------------------

REFUSED_URLS = [
    "http://169.254.169.254",
    "http://169.254.169.254/latest/meta-data",
    "http://169.254.0.1:8080",
    "http://[fe80::1]",
    "http://[fe80::1%25eth0]:80",
    "http://[fd00:ec2::254]",
    "http://[::ffff:169.254.169.254]",
]


@pytest.mark.parametrize("url", REFUSED_URLS)
async def test_link_local_and_metadata_upstreams_are_refused_at_registration(
    gw: Harness, url: str
) -> None:
    api = Api("meta", url, Injection(InjectionKind.HEADER), "dev")
    with pytest.raises(InvalidInput, match="link-local or cloud-metadata"):
        directory.add_api(gw.ctx, gw.root, api, Secret("s"))
    gw.ctx.allow_link_local_upstreams = True  # an explicit setting allows them
    assert directory.add_api(gw.ctx, gw.root, api, Secret("s")).name == "meta"


@pytest.mark.parametrize("url", ["http://127.0.0.1:9", "http://[::1]:9", "http://localhost:9"])
async def test_loopback_upstreams_stay_allowed(gw: Harness, url: str) -> None:
    api = Api("local", url, Injection(InjectionKind.HEADER), "dev")
    assert directory.add_api(gw.ctx, gw.root, api, Secret("s")).base_url == url


class FakeResolver(AbstractResolver):
    """Answers for ``*.test`` names from a table (and may stall): no real DNS, ever."""

    def __init__(self, table: dict[str, str], stall: asyncio.Event | None = None) -> None:
        self.table = table
        self.stall = stall
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        if self.stall is not None:
            await self.stall.wait()
        address = self.table[host]
        v6 = ":" in address
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if v6 else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        return None


@contextlib.asynccontextmanager
async def _proxy_server(gw: Harness, **options: Any) -> AsyncIterator[int]:
    """A second gateway on the same view, enforcer and audit sink, with other options."""
    proxy = Proxy(
        gw.enforcer, gw.sink, gw.clock, **{"connect_timeout": 2.0, "timeout": 5.0, **options}
    )
    await proxy.start()
    runner, port = await serve(create_gateway_server(proxy))
    try:
        yield port
    finally:
        gw.echo.release.set()
        await runner.cleanup()
        await proxy.close()


async def _register(gw: Harness, name: str, url: str) -> str:
    gw.ctx.allow_link_local_upstreams = True  # registered when allowed, or before the rule
    directory.add_api(
        gw.ctx,
        None,
        Api(name, url, Injection(InjectionKind.HEADER), "dev"),
        Secret("sk_meta_0123456789"),
    )
    return gw.issue(api=name).token


async def exchange(port: int, request: bytes) -> Reply:
    """Send ``request``; read one answer's head and then its ``Content-Length`` bytes (or
    up to EOF). Not until EOF: after refusing a body, aiohttp keeps reading the rest of
    it for a while (lingering close) before closing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        while head.startswith(b"HTTP/1.1 100 "):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
        if length:
            body = await asyncio.wait_for(reader.readexactly(int(length[1])), timeout=5)
        else:
            body = await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()
    return parse_raw(head + body)


NAMES = {"metadata.test": "169.254.169.254", "ll6.test": "fe80::1", "imds6.test": "fd00:ec2::254"}


@pytest.mark.parametrize("name", sorted(NAMES))
async def test_a_name_resolving_to_a_refused_address_is_never_connected(
    gw: Harness, name: str
) -> None:
    resolver = FakeResolver(NAMES)
    token = await _register(gw, "meta", f"http://{name}:{closed_port()}")
    async with _proxy_server(gw, resolver=resolver) as port:
        reply = await exchange(
            port, wire("GET", "/meta/v1/x", [("Authorization", f"Bearer {token}")])
        )
        assert (reply.status, reply.code) == (502, "upstream-address-refused")
    assert resolver.asked == [name]
    event = gw.events(EventType.ACCESS_ALLOWED)[-1]
    assert (event.data["status"], event.data["error"]) == (502, "upstream-address-refused")


class NoNetwork:
    """A stand-in client session: the proxy must refuse before asking it for anything."""

    def __init__(self) -> None:
        self.requests = 0

    async def request(self, *args: object, **kwargs: object) -> None:
        self.requests += 1
        raise AssertionError("the proxy tried to connect to a refused address")

    async def close(self) -> None:
        return None


@pytest.mark.parametrize(
    "url", ["http://169.254.169.254", "http://[fe80::1]:80", "http://[fd00:ec2::254]"]
)
async def test_a_refused_address_literal_is_never_connected(gw: Harness, url: str) -> None:
    token = await _register(gw, "meta", url)
    stand_in = NoNetwork()
    gw.proxy._session = stand_in  # type: ignore[assignment]
    reply = await gw.raw(wire("GET", "/meta/v1/x", [("Authorization", f"Bearer {token}")]))
    assert (reply.status, reply.code) == (502, "upstream-address-refused")
    assert stand_in.requests == 0
    assert gw.events(EventType.ACCESS_ALLOWED)[-1].data["error"] == "upstream-address-refused"


async def test_an_explicit_setting_allows_a_link_local_upstream(gw: Harness) -> None:
    resolver = FakeResolver({"metadata.test": "127.0.0.1"})
    echo_port = gw.view.upstreams["echo"].api.base_url.rsplit(":", 1)[1].split("/")[0]
    token = await _register(gw, "meta", f"http://metadata.test:{echo_port}/h")
    async with _proxy_server(gw, resolver=resolver, allow_link_local=True) as port:
        reply = await exchange(
            port, wire("GET", "/meta/v1/x", [("Authorization", f"Bearer {token}")])
        )
        assert reply.status == 200
    assert [h.target for h in gw.hits] == ["/h/v1/x"]


# timeouts and limits ----------------------------------------------------------------------


async def test_upstream_connect_timeout_is_a_504(gw: Harness) -> None:
    stalled = FakeResolver({"slow.test": "127.0.0.1"}, stall=asyncio.Event())
    token = await _register(gw, "slow", f"http://slow.test:{closed_port()}")
    async with _proxy_server(gw, resolver=stalled, connect_timeout=0.2) as port:
        reply = await exchange(
            port, wire("GET", "/slow/v1/x", [("Authorization", f"Bearer {token}")])
        )
        assert (reply.status, reply.code) == (504, "upstream-connect-timeout")
    assert gw.events(EventType.ACCESS_ALLOWED)[-1].data["error"] == "upstream-connect-timeout"


async def test_upstream_headers_timeout_is_a_504(gw: Harness) -> None:
    token = gw.issue(api="echo").token
    async with _proxy_server(gw, timeout=0.2) as port:
        reply = await exchange(
            port, wire("GET", "/echo/v1/hang", [("Authorization", f"Bearer {token}")])
        )
        assert (reply.status, reply.code) == (504, "upstream-timeout")
    assert gw.events(EventType.ACCESS_ALLOWED)[-1].data["error"] == "upstream-timeout"


@pytest.fixture
async def stalling_upstream() -> AsyncIterator[str]:
    """Answers 200 with ``Content-Length: 10``, sends two bytes, then nothing."""
    done = asyncio.Event()

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "10"})
        await response.prepare(request)
        await response.write(b"ab")
        await done.wait()
        return response

    runner, port = await serve(web.Server(handle))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        done.set()
        await runner.cleanup()


async def test_upstream_body_timeout_cuts_the_answer(gw: Harness, stalling_upstream: str) -> None:
    token = await _register(gw, "stall", stalling_upstream)
    async with _proxy_server(gw, timeout=0.2) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(wire("GET", "/stall/v1/x", [("Authorization", f"Bearer {token}")]))
        data = await asyncio.wait_for(reader.read(), timeout=5)  # the gateway cuts it
        writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert body == b"ab"  # cut short: the caller sees fewer bytes than announced
    assert gw.events(EventType.ACCESS_ALLOWED)[-1].data["error"] == "upstream-body-timeout"


BODY_LIMIT = 1000


async def test_a_declared_body_over_the_limit_is_refused_before_the_upstream(gw: Harness) -> None:
    gw.proxy.max_body_size = BODY_LIMIT
    token = gw.issue(["POST /**"], api="echo").token
    head = wire(
        "POST",
        "/echo/v1/x",
        [
            ("Authorization", f"Bearer {token}"),
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", "1001"),
        ],
    )
    reply = await exchange(gw.port, head)  # the body is never sent: the answer comes first
    gw.assert_denied(reply, 413, "body-too-large", api="echo")


async def test_expect_continue_over_the_limit_never_uploads(gw: Harness) -> None:
    gw.proxy.max_body_size = BODY_LIMIT
    token = gw.issue(["POST /**"], api="echo").token
    reply = await exchange(
        gw.port,
        wire(
            "POST",
            "/echo/v1/x",
            [
                ("Authorization", f"Bearer {token}"),
                ("Expect", "100-continue"),
                ("Content-Length", "5000"),
            ],
        ),
    )
    gw.assert_denied(reply, 413, "body-too-large", api="echo")


@pytest.mark.parametrize(
    ("size", "status"), [(BODY_LIMIT, 200), (BODY_LIMIT + 1, 413), (50_000, 413)]
)
async def test_a_chunked_body_is_limited_while_streaming(
    gw: Harness, size: int, status: int
) -> None:
    gw.proxy.max_body_size = BODY_LIMIT
    token = gw.issue(["POST /**"], api="echo").token
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in _chunks(b"z" * size, 300)) + b"0\r\n\r\n"
    reply = await gw.raw(
        wire(
            "POST",
            "/echo/v1/x",
            [
                ("Authorization", f"Bearer {token}"),
                ("Content-Type", "application/octet-stream"),
                ("Transfer-Encoding", "chunked"),
            ],
        )
        + body
    )
    assert reply.status == status
    (event,) = gw.events(EventType.ACCESS_ALLOWED)
    if status == 200:
        assert reply.json()["body_length"] == size
    else:  # the upload was stopped at the limit: the upstream never had a whole request
        assert reply.code == "body-too-large"
        assert event.data["error"] == "body-too-large"


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.mark.parametrize(
    ("content_type", "audited"),
    [
        ("application/x-www-form-urlencoded", EventType.ACCESS_DENIED),
        ("application/json", EventType.ACCESS_ALLOWED),
    ],
)
async def test_a_slow_client_body_is_a_408(
    gw: Harness, content_type: str, audited: EventType
) -> None:
    """A form is read before the upstream is asked (denied); other bodies stream up."""
    gw.proxy.client_timeout = 0.2
    token = gw.issue(["POST /**"], api="echo").token
    head = wire(
        "POST",
        "/echo/v1/x",
        [
            ("Authorization", f"Bearer {token}"),
            ("Content-Type", content_type),
            ("Content-Length", "100"),
        ],
    )
    reply = await exchange(gw.port, head + b"a=1")  # then nothing: the body stalls
    assert (reply.status, reply.code) == (408, "client-timeout")
    event = gw.events(audited)[-1]
    assert event.data.get("reason", event.data.get("error")) == "client-timeout"
    if audited is EventType.ACCESS_DENIED:
        assert gw.hits == []


async def test_a_slow_request_head_is_cut(gw: Harness) -> None:
    """Slowloris: a head still incomplete after ``client_timeout`` loses its connection.
    No request was parsed, so nothing is answered or audited."""
    async with _proxy_server(gw, client_timeout=0.3) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /echo/v1/x HTTP/1.1\r\nHost: g\r\nX-Slow: ")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout=3)  # EOF when the gateway cuts
        writer.close()
        assert data == b""
    assert gw.hits == []
    assert gw.sink.events == []
