"""Running the processes: ``jitgate up`` (everything in one), ``serve control``, ``serve gateway``.

Everything runs on one uvloop event loop: the control plane under uvicorn, the gateway
as an aiohttp server, the demo upstream, and the periodic jobs (grant and pending
expiry, audit checkpoints, notification delivery and expiry warnings, the gateway's
resync). The blocking database work of those jobs runs in worker threads. Where the
control plane runs, SIGHUP and a change of the policy file reload the policy
(:mod:`jitgate.services.policy`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator

import uvicorn
import uvloop
from aiohttp import web

from jitgate.config import Settings
from jitgate.control.app import create_app
from jitgate.demo.fixture import set_up_demo
from jitgate.demo.upstream import create_upstream
from jitgate.gateway.app import create_gateway_server
from jitgate.services import access, audit, grants
from jitgate.services.context import Context
from jitgate.services.policy import PolicyWatcher, Trigger, reload_in_background
from jitgate.wiring import Runtime, build

log = logging.getLogger(__name__)

Sockets = dict[str, socket.socket]
OnReady = Callable[[Runtime, dict[str, str] | None], None]


def _split(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def _bind(host: str, port: int, listen: str) -> socket.socket:
    """A listening socket, bound here so that a busy port is a plain ``OSError`` (uvicorn
    would ``sys.exit`` from inside the event loop instead)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {listen}: {exc.strerror}") from exc
    return sock


class _Uvicorn(uvicorn.Server):
    """uvicorn, minus one thing: after a graceful stop it re-raises the SIGTERM it caught,
    which kills the process before our own shutdown (the audit writer's last flush) runs."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


async def _every(seconds: float, job: Callable[[], object], name: str) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await asyncio.to_thread(job)
        except Exception:
            log.exception("periodic job %s failed", name)


async def _serve_aiohttp(server: web.Server, sock: socket.socket) -> web.ServerRunner:
    runner = web.ServerRunner(server, handle_signals=False, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return runner


def _bind_all(settings: Settings, *, control: bool, gateway: bool, demo: bool) -> Sockets:
    """Every listening socket, bound before anything is written: a busy port stops
    start-up with a clear error and leaves the database (and its audit log) untouched."""
    wanted = {
        "control": (control, settings.control.listen),
        "gateway": (gateway, settings.gateway.listen),
        "demo": (demo, settings.demo.upstream_listen),
    }
    sockets: Sockets = {}
    try:
        for role, (enabled, listen) in wanted.items():
            if enabled:
                sockets[role] = _bind(*_split(listen), listen)
    except OSError:
        for sock in sockets.values():
            sock.close()
        raise
    return sockets


async def _run(
    rt: Runtime,
    sockets: Sockets,
    *,
    control: bool,
    gateway: bool,
    demo: bool,
    on_ready: OnReady | None,
) -> None:
    settings = rt.settings
    runners: list[web.ServerRunner] = []
    tasks: list[asyncio.Task[None]] = []
    tokens = None
    try:
        if demo:
            tokens, secret = set_up_demo(
                rt.ctx, settings.state_dir, f"http://{settings.demo.upstream_listen}"
            )
            runners.append(await _serve_aiohttp(create_upstream(secret), sockets["demo"]))
        if gateway:
            assert rt.proxy is not None
            assert rt.view is not None
            await rt.proxy.start()
            runners.append(
                await _serve_aiohttp(
                    create_gateway_server(rt.proxy, rt.decisions), sockets["gateway"]
                )
            )
            # Other processes' revocations arrive by resync: at most 250 ms late (SPEC: < 1 s).
            period = min(max(settings.revocation.max_staleness.total_seconds() / 4, 0.05), 0.25)
            tasks.append(asyncio.create_task(_every(period, rt.view.resync, "resync")))
        jobs: list[tuple[float, Callable[[], object], str]] = []
        if control:
            ctx = rt.ctx
            jobs = [
                (1.0, lambda: grants.expire_grants(ctx), "expire-grants"),
                (5.0, lambda: grants.revoke_idle(ctx), "revoke-idle-grants"),
                (5.0, lambda: access.expire_pending(ctx), "expire-pending"),
                (
                    settings.audit.checkpoint_interval.total_seconds(),
                    lambda: audit.checkpoint(ctx),
                    "checkpoint",
                ),
                *(rt.notifier.jobs() if rt.notifier is not None else ()),
            ]
        tasks.extend(asyncio.create_task(_every(s, j, n)) for s, j, n in jobs)
        if control and rt.ctx.policy_file is not None:
            watcher = PolicyWatcher(rt.ctx, rt.ctx.policy_file)
            tasks.append(asyncio.create_task(_every(1.0, watcher.poll, "policy-watch")))
        _reload_on_sighup(rt.ctx if control else None, tasks)
        if control:
            host, port = _split(settings.control.listen)
            config = uvicorn.Config(
                create_app(rt.ctx),
                host=host,
                port=port,
                log_config=None,
                access_log=False,
                loop="none",
                lifespan="off",
            )
            server = _Uvicorn(config)
            started = asyncio.create_task(server.serve(sockets=[sockets["control"]]))
            while not server.started and not started.done():  # noqa: ASYNC110 - uvicorn has no event
                await asyncio.sleep(0.02)
            if started.done():
                await started  # re-raise why it could not start
                return
            if on_ready:
                on_ready(rt, tokens)
            await started
        else:
            if on_ready:
                on_ready(rt, tokens)
            await _wait_for_signal()
    finally:
        for task in tasks:
            task.cancel()
        for runner in runners:
            await runner.cleanup()
        if rt.proxy is not None:
            await rt.proxy.close()


def _reload_on_sighup(ctx: Context | None, tasks: list[asyncio.Task[None]]) -> None:
    """SIGHUP reloads the policy file, off the event loop. A gateway-only process has no
    policy: it logs the signal rather than let SIGHUP's default action end it."""

    async def reload(ctx: Context) -> None:
        try:
            await asyncio.to_thread(reload_in_background, ctx, Trigger.SIGNAL)
        except Exception:
            log.exception("SIGHUP: the policy reload failed; the policy in force stays")

    def on_signal() -> None:
        if ctx is None:
            log.info("SIGHUP: this process serves no control plane, so has no policy to reload")
            return
        log.info("SIGHUP: reloading the policy")
        tasks.append(asyncio.create_task(reload(ctx)))

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_signal)


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def run(
    settings: Settings,
    *,
    control: bool = True,
    gateway: bool = True,
    demo: bool = False,
    on_ready: OnReady | None = None,
) -> None:
    sockets = _bind_all(settings, control=control, gateway=gateway, demo=demo)
    try:
        rt = build(settings, demo=demo, gateway=gateway)
    except BaseException:
        for sock in sockets.values():
            sock.close()
        raise
    # Everything loaded so far lives as long as the process: keep it out of the garbage
    # collector's full passes, which otherwise pause the event loop for 100 ms and more.
    gc.collect()
    gc.freeze()
    try:
        main: Awaitable[None] = _run(
            rt, sockets, control=control, gateway=gateway, demo=demo, on_ready=on_ready
        )
        with contextlib.suppress(KeyboardInterrupt):
            uvloop.run(main)  # type: ignore[arg-type]
    finally:
        rt.close()
