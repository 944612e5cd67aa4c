"""What every serving process shares: listening sockets, aiohttp sites, periodic jobs,
the gateway's start, and waiting for SIGINT/SIGTERM. Used by :mod:`jitgate.runner` (the
main process) and :mod:`jitgate.workers` (gateway worker processes)."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Callable

from aiohttp import web

from jitgate.config import Settings
from jitgate.gateway.app import create_gateway_server
from jitgate.gateway.authz import DecisionEndpoints
from jitgate.gateway.listener import ChangeListener, keep_fresh
from jitgate.gateway.proxy import Proxy
from jitgate.gateway.view import GatewayView
from jitgate.storage.notify import listen_conninfo

log = logging.getLogger(__name__)

GIL_SWITCH_INTERVAL = 0.002  # seconds (CPython's default: 0.005)


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def bind(host: str, port: int, listen: str, *, reuse_port: bool = False) -> socket.socket:
    """A bound socket, bound here so that a busy port is a plain ``OSError`` (uvicorn
    would ``sys.exit`` from inside the event loop instead). ``reuse_port``: several
    processes of this user bind the same address and the kernel spreads connections."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {listen}: {exc.strerror}") from exc
    return sock


async def every(seconds: float, job: Callable[[], object], name: str) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await asyncio.to_thread(job)
        except Exception:
            log.exception("periodic job %s failed", name)


async def serve_aiohttp(server: web.Server, sock: socket.socket) -> web.ServerRunner:
    runner = web.ServerRunner(server, handle_signals=False, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return runner


async def start_gateway(
    settings: Settings,
    view: GatewayView,
    proxy: Proxy,
    decisions: DecisionEndpoints | None,
    sock: socket.socket,
) -> tuple[web.ServerRunner, asyncio.Task[None]]:
    """The gateway serving on ``sock``, and its periodic resync."""
    # The audit writer and the resync are threads of this process: while one of them holds
    # the GIL, a call waits until it is handed over, by default after up to 5 ms.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    await proxy.start()
    runner = await serve_aiohttp(create_gateway_server(proxy, decisions), sock)
    # Other processes' changes arrive by resync: on PostgreSQL at once, woken by their
    # NOTIFY; in any case at most 250 ms late (SPEC: < 1 s). Cancelling the task stops both.
    period = min(max(settings.revocation.max_staleness.total_seconds() / 4, 0.05), 0.25)
    conninfo = listen_conninfo(settings.database)
    listener = None if conninfo is None else ChangeListener(conninfo)
    return runner, asyncio.create_task(keep_fresh(view.resync, period, listener))


async def wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
