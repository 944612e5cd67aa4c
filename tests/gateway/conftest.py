"""A real gateway in front of real upstreams, on loopback sockets, in the test's event loop.

The ``gw`` fixture starts, on free ``127.0.0.1`` ports:

* the demo upstream (:func:`jitgate.demo.upstream.create_upstream`) registered as API
  ``demo`` (``Authorization: Bearer {secret}``), wrapped so that every request it
  receives is counted;
* an echo upstream that reports the headers, query and body it received — with every
  known secret replaced by a marker such as ``<echo>``, so the report itself never
  carries a secret — registered three times: ``echo`` (header ``X-Api-Key``), ``echoq``
  (query parameter ``api_key``, with a secret full of characters that need
  percent-encoding) and ``echob`` (basic auth as ``svc``);
* API ``down``, whose base URL is a port nobody listens on;
* the gateway: a :class:`GatewayView` on the test store, an :class:`Enforcer` and a
  :class:`Proxy` whose audit sink is a :class:`ListSink` and whose clock is the test's
  :class:`FrozenClock` (expiry is tested by moving that clock, never by sleeping).

Every reply the harness hands back has already been checked for every spelling of every
upstream secret, in the status line, the headers and the body (security invariant 5).

Gateway tests run on SQLite, each on a copy of one template database (migrated, with a
signing key under the session's master key and the principals ``alice``, ``bob`` —
engineers — and ``root``, an administrator); ``ctx`` is overridden here to use a policy
that grants any scope on any API at once. A test opts into PostgreSQL with
``@pytest.mark.parametrize("store", ["postgres"], indirect=True)``.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import secrets
import shutil
import socket
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from jitgate.audit.events import EventType, NewEvent
from jitgate.clock import FrozenClock
from jitgate.demo.upstream import create_upstream
from jitgate.domain.models import Api, Injection, InjectionKind, Principal
from jitgate.gateway.app import create_gateway_server
from jitgate.gateway.enforce import Enforcer
from jitgate.gateway.proxy import Proxy
from jitgate.gateway.view import GatewayView
from jitgate.policy import Policy, parse_policy
from jitgate.problems import PROBLEM_CONTENT_TYPE
from jitgate.secrets import Secret, SecretBox
from jitgate.services import access, directory, grants
from jitgate.services.context import Context
from jitgate.storage.store import Store
from tests.conftest import ListSink, _truncate, make_context

# Every engineer may get any scope on any API at once: the gateway tests are about
# enforcing grants, not about deciding them.
TEST_POLICY = """\
version: 1
defaults: {max_duration: 1h, pending_ttl: 24h}
rules:
  - name: gateway-tests
    requesters: {groups: [engineering]}
    apis: ["*"]
    scopes: ["* /**"]
    max_duration: 1h
    approval: auto
"""

MAX_STALENESS = 2.0
BASIC_USER = "svc"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def _master_key() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture
def box(_master_key: bytes) -> SecretBox:
    """One master key for the session, so the template database's signing key opens."""
    return SecretBox(_master_key)


@functools.cache
def _test_policy() -> Policy:
    return parse_policy(TEST_POLICY, "gateway-tests.yaml")


def _context(store: Store, clock: FrozenClock, box: SecretBox) -> Context:
    return make_context(store, clock, box, _test_policy())


PRINCIPALS: dict[str, dict[str, Any]] = {
    "alice": {"groups": ["engineering"]},
    "bob": {"groups": ["engineering"]},
    "root": {"is_admin": True},
}


def _ensure_principals(ctx: Context) -> dict[str, Principal]:
    known = {p.id: p for p in directory.list_principals(ctx)}
    for pid, extra in PRINCIPALS.items():
        if pid not in known:
            known[pid] = directory.create_principal(ctx, None, pid, **extra)
    return known


@pytest.fixture
def ctx(store: Store, clock: FrozenClock, box: SecretBox) -> Context:
    """The root ``ctx`` on the gateway-test policy (any scope, any API, at once)."""
    return _context(store, clock, box)


@pytest.fixture(scope="session")
def _template_sqlite(tmp_path_factory: pytest.TempPathFactory, _master_key: bytes) -> Path:
    """A migrated SQLite file with a signing key and the principals; tests start from a copy.

    Migrating, generating the key and creating principals for every test is most of a
    test's cost.
    """
    path = tmp_path_factory.mktemp("gateway-template") / "jitgate.db"
    template = Store.open(f"sqlite:///{path}")
    try:
        _ensure_principals(_context(template, FrozenClock(), SecretBox(_master_key)))
    finally:
        template.close()
    return path


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """SQLite unless a test asks for ``"postgres"`` through indirect parametrisation."""
    if getattr(request, "param", "sqlite") == "postgres":
        pg: Store = request.getfixturevalue("_pg_store")
        _truncate(pg)
        yield pg
        return
    path = tmp_path / "jitgate.db"
    shutil.copyfile(request.getfixturevalue("_template_sqlite"), path)
    sqlite = Store.open(f"sqlite:///{path}", migrate_schema=False)
    yield sqlite
    sqlite.close()


# replies ------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: CIMultiDict[str]
    body: bytes
    reason: str = ""

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def is_problem(self) -> bool:
        return self.headers.get("Content-Type", "").startswith(PROBLEM_CONTENT_TYPE)

    @property
    def code(self) -> str | None:
        """The problem ``code`` (None when the body is not a problem document)."""
        if not self.is_problem:
            return None
        body = self.json()
        assert body["type"] == f"urn:jitgate:problem:{body['code']}"
        assert body["status"] == self.status
        return str(body["code"])


def _parse_raw(data: bytes) -> Reply:
    head, _, body = data.partition(b"\r\n\r\n")
    while head.startswith(b"HTTP/1.1 1"):  # skip interim answers (100 Continue)
        head, _, body = body.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    _, status_text, reason = [*lines[0].split(" ", 2), ""][:3]
    status = int(status_text)
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.add(name.strip(), value.strip())
    if headers.get("Transfer-Encoding", "").lower() == "chunked":
        decoded, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            decoded, rest = decoded + rest[:size], rest[size + 2 :]
        body = decoded
    return Reply(status, headers, body, reason)


# upstreams ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    upstream: str
    method: str
    target: str


class EchoUpstream:
    """Reports what it received, with known secrets masked; a few paths misbehave.

    ``…/redirect`` answers 302 to ``…/landing``; ``…/leak`` reflects the credential it
    received into response headers (``Location`` and others); ``…/teapot`` answers 418
    with the credential in the reason phrase; ``…/hop`` answers with hop-by-hop headers;
    ``…/hang`` answers only when the test ends.
    """

    def __init__(self, hits: list[Hit], masks: Mapping[str, str]) -> None:
        self.hits = hits
        # longest first, so "Bearer sk…" is masked before its "sk…"
        self.masks = sorted(masks.items(), key=lambda kv: -len(kv[0]))
        self.release = asyncio.Event()

    def mask(self, value: str) -> str:
        for form, label in self.masks:
            value = value.replace(form, f"<{label}>")
        return value

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.hits.append(Hit("echo", request.method, request.raw_path))
        raw_path, _, query = request.raw_path.partition("?")
        last = raw_path.rsplit("/", 1)[-1]
        if last == "redirect":
            return web.Response(status=302, headers={"Location": "/h/landing"})
        if last == "leak":
            seen_key = request.headers.get("X-Api-Key", "")
            seen_auth = request.headers.get("Authorization", "")
            return web.Response(
                status=302,
                headers={
                    "Location": f"http://elsewhere.test{request.raw_path}&k={seen_key}",
                    "X-Seen-Api-Key": seen_key,
                    "X-Seen-Authorization": seen_auth,
                    "Content-Location": request.raw_path,
                },
            )
        if last == "teapot":  # an error status whose reason phrase reflects the credential
            seen = request.headers.get("X-Api-Key") or request.headers.get("Authorization", "")
            return web.Response(status=418, reason=f"Bad key {seen}", text="no coffee")
        if last == "hop":
            return web.Response(
                text="hop",
                headers={
                    "X-Upstream": "echo",
                    "Connection": "X-Internal",
                    "X-Internal": "private",
                    "Keep-Alive": "timeout=5",
                    "Proxy-Authenticate": "Basic",
                    "Upgrade": "h2c",
                },
            )
        if last == "hang":
            await self.release.wait()
            return web.Response(text="late")
        body = await request.read()
        echo = {
            "method": request.method,
            "path": raw_path,
            "query": [[self.mask(k), self.mask(v)] for k, v in parse_qsl(query, True)],
            "raw_query": self.mask(query),
            "headers": [[k, self.mask(v)] for k, v in request.headers.items()],
            "body_length": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        }
        return web.json_response(echo, headers={"X-Upstream": "echo", "Cache-Control": "no-store"})


def _counting(server: web.Server, hits: list[Hit], name: str) -> web.Server:
    inner = server.request_handler

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        hits.append(Hit(name, request.method, request.raw_path))
        return await inner(request)

    return web.Server(handle)


async def serve(server: web.Server) -> tuple[web.ServerRunner, int]:
    """Start ``server`` on a free loopback port; the runner (to clean up) and the port."""
    runner = web.ServerRunner(server, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port: int = runner.addresses[0][1]  # the port the kernel chose
    return runner, port


def closed_port() -> int:
    """A loopback port that nobody listens on (bound, read, released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# the harness --------------------------------------------------------------------------


@dataclass
class Harness:
    ctx: Context
    clock: FrozenClock
    box: SecretBox
    store: Store
    view: GatewayView
    enforcer: Enforcer
    proxy: Proxy
    sink: ListSink
    port: int
    session: aiohttp.ClientSession
    secrets: dict[str, str]  # API name -> its upstream secret
    hits: list[Hit]
    echo: EchoUpstream
    alice: Principal
    bob: Principal
    root: Principal
    cleanups: list[web.ServerRunner] = field(default_factory=list)

    # secrets ---------------------------------------------------------------------------
    @property
    def secret_forms(self) -> set[str]:
        """Every spelling in which an upstream secret could leak."""
        forms: set[str] = set()
        for value in self.secrets.values():
            forms |= {value, quote(value, safe=""), quote_plus(value), quote(value)}
            forms.add(base64.b64encode(f"{BASIC_USER}:{value}".encode()).decode())
        return forms

    def assert_no_secret(self, reply: Reply) -> None:
        text = reply.reason + "\n" + "\n".join(f"{k}: {v}" for k, v in reply.headers.items())
        text += "\n" + reply.body.decode("latin-1")
        for form in self.secret_forms:
            assert form not in text, "an upstream secret left the gateway"

    # calling ---------------------------------------------------------------------------
    def url(self, target: str) -> URL:
        return URL(f"http://127.0.0.1:{self.port}{target}", encoded=True)

    async def call(
        self,
        method: str,
        target: str,
        token: str | None = None,
        *,
        headers: Mapping[str, str] | list[tuple[str, str]] | None = None,
        data: Any = None,
    ) -> Reply:
        sent: CIMultiDict[str] = CIMultiDict(headers or {})
        if token is not None:
            sent.add("Authorization", f"Bearer {token}")
        async with self.session.request(
            method, self.url(target), headers=sent, data=data, allow_redirects=False
        ) as response:
            reply = Reply(
                response.status,
                CIMultiDict(response.headers),
                await response.read(),
                response.reason or "",
            )
        self.assert_no_secret(reply)
        return reply

    async def raw(self, request: bytes) -> Reply:
        """Send bytes as they are; read the answer until the gateway closes."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(request)
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), timeout=5)
        finally:
            writer.close()
        reply = _parse_raw(data)
        self.assert_no_secret(reply)
        return reply

    async def raw_request(
        self,
        method: str,
        target: str,
        token: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> Reply:
        lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{self.port}"]
        if token is not None:
            lines.append(f"Authorization: Bearer {token}")
        lines += [f"{k}: {v}" for k, v in headers or []]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        lines.append("Connection: close")
        return await self.raw(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    # grants ------------------------------------------------------------------------------
    def issue(
        self,
        scopes: list[str] | None = None,
        *,
        api: str = "demo",
        duration: str = "10m",
        starts_at: datetime | None = None,
        principal: Principal | None = None,
    ) -> grants.IssuedToken:
        who = principal or self.alice
        view = access.create_request(
            self.ctx,
            who,
            api=api,
            scopes=scopes or ["GET /**"],
            duration=duration,
            reason="gateway test",
            starts_at=starts_at,
        )
        assert view.grant is not None, view.request.decision.reasons
        return grants.issue_token(self.ctx, who, view.grant.id)

    # audit -------------------------------------------------------------------------------
    def events(self, kind: EventType) -> list[NewEvent]:
        return [e for e in self.sink.events if e.type is kind]

    @property
    def last_event(self) -> NewEvent:
        assert self.sink.events, "no audit event was submitted"
        return self.sink.events[-1]

    def assert_denied(
        self,
        reply: Reply,
        status: int,
        code: str,
        *,
        hits_before: int = 0,
        api: str | None = "demo",
    ) -> NewEvent:
        """A problem answer with this status and code, no upstream call, an audit event."""
        assert reply.status == status, reply.body
        if reply.body:
            assert reply.code == code, reply.body
        else:  # the answer to HEAD has the problem's headers only
            assert reply.is_problem
        if status == 401:
            assert reply.headers["WWW-Authenticate"].startswith("Bearer")
        assert len(self.hits) == hits_before, f"the upstream was reached: {self.hits}"
        event = self.last_event
        assert event.type is EventType.ACCESS_DENIED
        assert event.data["reason"] == code
        assert event.data["status"] == status
        assert event.api == api
        return event


def secret_masks(keys: Mapping[str, str]) -> dict[str, str]:
    """Every spelling of each API's secret (plain, percent-encoded, in Basic credentials),
    mapped to the name the echo upstream shows instead of it."""
    masks: dict[str, str] = {}
    for name, value in keys.items():
        for form in (value, quote(value, safe=""), quote_plus(value)):
            masks[form] = name
        masks[base64.b64encode(f"{BASIC_USER}:{value}".encode()).decode()] = f"{name}-basic"
    return masks


async def _start(ctx: Context, clock: FrozenClock, box: SecretBox, store: Store) -> Harness:
    hits: list[Hit] = []
    suffix = secrets.token_hex(8)
    keys = {
        "demo": f"sk_demo_{suffix}",
        "echo": f"ek_{suffix}",
        "echoq": f"qk/+= &?#%{suffix}",  # needs percent-encoding in a query
        "echob": f"bk_{suffix}",
        "down": f"sk_down_{suffix}",
    }
    echo = EchoUpstream(hits, secret_masks(keys))
    demo_runner, demo_port = await serve(
        _counting(create_upstream(Secret(keys["demo"])), hits, "demo")
    )
    echo_runner, echo_port = await serve(web.Server(echo.handle))

    view = GatewayView(store, box, clock, max_staleness=MAX_STALENESS)
    echo_base = f"http://127.0.0.1:{echo_port}"
    registered = {
        "demo": (f"http://127.0.0.1:{demo_port}", Injection(InjectionKind.HEADER)),
        "echo": (f"{echo_base}/h", Injection(InjectionKind.HEADER, "X-Api-Key", "{secret}")),
        "echoq": (f"{echo_base}/q", Injection(InjectionKind.QUERY, "api_key")),
        "echob": (f"{echo_base}/b", Injection(InjectionKind.BASIC, username=BASIC_USER)),
        "down": (f"http://127.0.0.1:{closed_port()}", Injection(InjectionKind.HEADER)),
    }
    for name, (base_url, injection) in registered.items():
        directory.add_api(ctx, None, Api(name, base_url, injection, "dev"), Secret(keys[name]))
    people = _ensure_principals(ctx)
    view.resync()
    ctx.feed = view  # from now on, in force as soon as the services announce a change

    sink = ListSink()
    enforcer = Enforcer(view, issuer=ctx.issuer, leeway=0.0, cache_size=128)
    proxy = Proxy(enforcer, sink, clock, connect_timeout=2.0, timeout=10.0)
    await proxy.start()
    gateway_runner, port = await serve(create_gateway_server(proxy))
    return Harness(
        ctx=ctx,
        clock=clock,
        box=box,
        store=store,
        view=view,
        enforcer=enforcer,
        proxy=proxy,
        sink=sink,
        port=port,
        session=aiohttp.ClientSession(),
        secrets=keys,
        hits=hits,
        echo=echo,
        alice=people["alice"],
        bob=people["bob"],
        root=people["root"],
        cleanups=[gateway_runner, demo_runner, echo_runner],
    )


@pytest.fixture
async def gw(
    anyio_backend: str, ctx: Context, clock: FrozenClock, box: SecretBox, store: Store
) -> AsyncIterator[Harness]:
    harness = await _start(ctx, clock, box, store)
    try:
        yield harness
    finally:
        harness.echo.release.set()
        await harness.session.close()
        for runner in harness.cleanups:
            await runner.cleanup()
        await harness.proxy.close()
