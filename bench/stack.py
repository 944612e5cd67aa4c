"""What the benches start on loopback: upstreams, a bare proxy, jitgate, nginx.

* the upstream: ``jitgate.demo.upstream`` (aiohttp on uvloop) in its own process, with a
  secret the bench chooses; ``GET /v1/ping`` answers a ~200-byte JSON echo;
* the bare proxy: the gateway's forwarding path (``jitgate.gateway.proxy``: same aiohttp
  server and client classes, settings and streaming) with no enforcement, header
  filtering or audit, so that "any Python proxy hop" and "jitgate" can be told apart;
* jitgate: a real ``jitgate up --demo`` (temporary state directory, free ports, a bench
  policy that lets ``engineering`` GET and PUT on the APIs ``demo``, ``bench`` and
  ``payments`` at once, approval automatic); the bench registers its upstream as an API with the
  admin token and, as alice, gets a grant and its token through the control-plane API;
* nginx (the Debian package ``nginx-light``, installed when missing and run as root):
  one unprivileged-style process (``master_process off``, one worker) serving the sites
  it is given, e.g. the shipped ``docs/integrations/nginx.conf`` with its ``{{…}}``
  placeholders filled, as ``tests/integrations`` does.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen
from typing import Any

import httpx

from harness import (
    LOOPBACK,
    START_TIMEOUT,
    BenchError,
    Processes,
    apt_install,
    can_apt,
    free_port,
    wait_until_ok,
)

UPSTREAM_SECRET = "bench-upstream-secret"  # a throwaway key for a loopback upstream
SECRET_AUTHORIZATION = f"Bearer {UPSTREAM_SECRET}"
PATH = "/v1/ping"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "integrations"
_PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")

BENCH_POLICY = """\
# Written by the benches: alice (engineering) reads and puts on demo, bench and payments
# at once.
version: 1
defaults: {max_duration: 1h, pending_ttl: 24h}
rules:
  - name: bench-read
    requesters: {groups: [engineering]}
    apis: [demo, bench, payments]
    scopes: ["GET /**", "PUT /**"]
    max_duration: 1h
    approval: auto
"""

UPSTREAM_SCRIPT = """\
import asyncio, sys
import uvloop
from aiohttp import web
from jitgate.demo.upstream import create_upstream
from jitgate.secrets import Secret

async def main(port: int, secret: str) -> None:
    server = create_upstream(Secret(secret))
    runner = web.ServerRunner(server, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
    await asyncio.Event().wait()

uvloop.run(main(int(sys.argv[1]), sys.argv[2]))
"""

BARE_PROXY_SCRIPT = """\
import asyncio, sys
import aiohttp, uvloop
from aiohttp import web
from yarl import URL

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "trailer"}

async def main(port: int, upstream: str, authorization: str) -> None:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=512, keepalive_timeout=30),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
    )

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        headers = {
            k: v for k, v in request.headers.items()
            if k.lower() not in HOP and k.lower() not in ("host", "authorization")
        }
        headers["Authorization"] = authorization
        async with session.request(
            request.method,
            URL(upstream + request.raw_path, encoded=True),
            headers=headers,
            data=request.content if request.body_exists else None,
            allow_redirects=False,
        ) as answer:
            response = web.StreamResponse(status=answer.status, reason=answer.reason)
            for k, v in answer.headers.items():
                if k.lower() not in HOP:
                    response.headers.add(k, v)
            await response.prepare(request)
            async for chunk in answer.content.iter_chunked(64 * 1024):
                await response.write(chunk)
            await response.write_eof()
            return response

    runner = web.ServerRunner(web.Server(handle), handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
    await asyncio.Event().wait()

uvloop.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
"""

# One process, one worker: the same for every nginx site measured. Logs stay off the
# request path (no access log), as the reference measurement had them.
NGINX_MAIN = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
{includes}
}}
"""

# nginx proxy_pass with pooled keep-alive upstream connections, as the bare proxy and the
# gateway keep theirs: the best a proxy hop does here. It injects the upstream secret.
NGINX_KEEPALIVE_SITE = """\
upstream bench_keepalive {{
    server {upstream};
    keepalive 64;
}}
server {{
    listen {listen};
    location / {{
        proxy_pass http://bench_keepalive;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Authorization "{authorization}";
    }}
}}
"""

# nginx proxy_pass without keep-alive (no upstream block: HTTP/1.0 and a new upstream
# connection per call): the weaker baseline.
NGINX_PLAIN_SITE = """\
server {{
    listen {listen};
    location / {{
        proxy_set_header Authorization "{authorization}";
        proxy_pass http://{upstream}$request_uri;
    }}
}}
"""


# ---------------------------------------------------------------------------- upstreams


def start_upstream(procs: Processes, name: str = "upstream") -> tuple[Popen[bytes], str]:
    """The demo upstream; the process and its base URL."""
    port = free_port()
    proc = procs.start(
        name, [sys.executable, "-c", UPSTREAM_SCRIPT, str(port), UPSTREAM_SECRET], clean_env()
    )
    url = f"http://{LOOPBACK}:{port}"
    wait_until_ok(url + PATH, proc, {"Authorization": SECRET_AUTHORIZATION})
    return proc, url


def start_bare_proxy(procs: Processes, upstream_url: str) -> tuple[Popen[bytes], str]:
    """The bare aiohttp proxy in front of ``upstream_url``; the process and its URL."""
    port = free_port()
    argv = [sys.executable, "-c", BARE_PROXY_SCRIPT, str(port), upstream_url]
    proc = procs.start("proxy", [*argv, SECRET_AUTHORIZATION], clean_env())
    url = f"http://{LOOPBACK}:{port}"
    wait_until_ok(url + PATH, proc)
    return proc, url


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("JITGATE_")}


# ------------------------------------------------------------------------------ jitgate


@dataclass(frozen=True, slots=True)
class Jitgate:
    """A running ``jitgate up --demo``."""

    proc: Popen[bytes]
    control: str  # base URLs
    gateway: str
    state: Path
    tokens: dict[str, str]  # the demo's bearer tokens by user (admin, alice, ...)


def jitgate_command() -> list[str]:
    beside = Path(sys.executable).with_name("jitgate")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("jitgate")
    if found:
        return [found]
    raise BenchError("the 'jitgate' command is not installed (run 'make install')")


def start_jitgate(
    procs: Processes, name: str = "jitgate", settings: Mapping[str, str] | None = None
) -> Jitgate:
    """``jitgate up --demo`` on free ports, with the bench policy and ``settings`` (env)."""
    control_port, gateway_port, demo_port = free_port(), free_port(), free_port()
    state = procs.log_dir / name
    policy = procs.log_dir / "bench-policy.yaml"
    policy.write_text(BENCH_POLICY)
    env = {
        **clean_env(),
        "JITGATE_STATE_DIR": str(state),
        "JITGATE_CONTROL__LISTEN": f"{LOOPBACK}:{control_port}",
        "JITGATE_GATEWAY__LISTEN": f"{LOOPBACK}:{gateway_port}",
        "JITGATE_DEMO__UPSTREAM_LISTEN": f"{LOOPBACK}:{demo_port}",
        "JITGATE_POLICY_FILE": str(policy),
        "JITGATE_LOG_LEVEL": "warning",
        **(settings or {}),
    }
    proc = procs.start(name, [*jitgate_command(), "up", "--demo"], env)
    control = f"http://{LOOPBACK}:{control_port}"
    gateway = f"http://{LOOPBACK}:{gateway_port}"
    try:
        wait_until_ok(control + "/healthz", proc)
        wait_until_ok(gateway + "/healthz", proc)
    except BenchError as exc:
        raise BenchError(f"{exc}\n--- {name} log ---\n{procs.log_tail(name)}") from exc
    tokens = json.loads((state / "demo-tokens.json").read_text())
    return Jitgate(proc, control, gateway, state, tokens)


def start_gateway_alone(
    procs: Processes, jg: Jitgate, workers: int, name: str = "serve-gateway"
) -> tuple[Popen[bytes], str]:
    """``jitgate serve gateway --workers N`` beside ``jg``, on its database and state (the
    deployment a gateway machine runs); the process and the gateway's base URL."""
    port = free_port()
    env = {
        **clean_env(),
        "JITGATE_STATE_DIR": str(jg.state),
        "JITGATE_ISSUER": jg.control,  # the tokens' issuer: the control plane's URL
        "JITGATE_GATEWAY__LISTEN": f"{LOOPBACK}:{port}",
        "JITGATE_POLICY_FILE": str(procs.log_dir / "bench-policy.yaml"),
        "JITGATE_LOG_LEVEL": "warning",
    }
    argv = [*jitgate_command(), "serve", "gateway", "--workers", str(workers)]
    proc = procs.start(name, argv, env)
    url = f"http://{LOOPBACK}:{port}"
    try:
        wait_until_ok(url + "/healthz", proc)
    except BenchError as exc:
        raise BenchError(f"{exc}\n--- {name} log ---\n{procs.log_tail(name)}") from exc
    return proc, url


def worker_pids(parent: int) -> list[int]:
    """The gateway workers of a jitgate process (its spawned children), from ``/proc``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if ppid == parent and b"spawn_main" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return sorted(found)


def call(jg: Jitgate, user: str, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """One control-plane call as ``user``; anything but 2xx stops the bench."""
    headers = {"Authorization": f"Bearer {jg.tokens[user]}"}
    response = httpx.request(method, jg.control + path, json=body, headers=headers, timeout=10)
    if response.status_code >= 300:
        raise BenchError(f"{method} {path}: {response.status_code} {response.text[:500]}")
    result: dict[str, Any] = response.json()
    return result


def register_api(jg: Jitgate, api: str, base_url: str) -> None:
    """As admin: ``api`` at ``base_url``, credential ``Authorization: Bearer <secret>``."""
    body = {
        "name": api,
        "base_url": base_url,
        "secret": UPSTREAM_SECRET,
        "environment": "dev",
        "owners": ["approvers"],
        "description": "the benches' upstream",
    }
    call(jg, "admin", "POST", "/v1/apis", body)


def grant(
    jg: Jitgate, api: str, minutes: int, scopes: Sequence[str] = ("GET /**",)
) -> tuple[str, str]:
    """As alice: a grant for ``scopes`` on ``api`` (approved at once); its id and token."""
    body = {"api": api, "scopes": list(scopes), "duration": f"{minutes}m", "reason": "bench"}
    request = call(jg, "alice", "POST", "/v1/requests", body)
    if not request.get("grant"):
        raise BenchError(f"the bench request was not granted at once: {request}")
    grant_id = str(request["grant"]["id"])
    issued = call(jg, "alice", "POST", f"/v1/grants/{grant_id}/token", {})
    return grant_id, str(issued["token"])


# -------------------------------------------------------------------------------- nginx


def example(name: str, values: Mapping[str, str | int]) -> str:
    """A shipped example of docs/integrations with its placeholders (all, only) filled."""
    text = (DOCS / name).read_text()
    found = set(_PLACEHOLDER.findall(text))
    if found != set(values):
        raise BenchError(f"{name}: placeholders {sorted(found)}, the bench fills {sorted(values)}")
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None
    )
    if found is None and can_apt():
        found = apt_install("nginx-light", "nginx")
    if found is None:
        raise BenchError("nginx is not installed (apt-get install nginx-light)")
    return found


def start_nginx(procs: Processes, sites: Mapping[str, str], ports: Iterable[int]) -> Popen[bytes]:
    """One nginx serving ``sites`` (file name -> server blocks), once ``ports`` all accept."""
    directory = procs.log_dir / "nginx"
    directory.mkdir()
    for file, text in sites.items():
        (directory / file).write_text(text)
    includes = "\n".join(f"    include {directory / file};" for file in sites)
    (directory / "nginx.conf").write_text(NGINX_MAIN.format(dir=directory, includes=includes))
    argv = [nginx_binary(), "-p", str(directory), "-c", str(directory / "nginx.conf")]
    proc = procs.start("nginx", [*argv, "-e", "stderr"], clean_env())
    deadline = time.monotonic() + START_TIMEOUT
    for port in ports:
        while True:
            try:
                socket.create_connection((LOOPBACK, port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"nginx did not listen:\n{procs.log_tail('nginx')}") from None
                time.sleep(0.05)
    return proc
