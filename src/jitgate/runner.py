"""Running the processes: ``jitgate up`` (everything in one), ``serve control``, ``serve gateway``.

Everything of the main process runs on one uvloop event loop: the control plane under
uvicorn, the gateway as an aiohttp server, the demo upstream, and the periodic jobs
(grant and pending expiry, audit checkpoints, notification delivery and expiry warnings,
the gateway's resync). The blocking database work of those jobs runs in threads. On
PostgreSQL each job (but the gateway's resync and the policy watch, which every process
needs) runs only in the control process that holds its advisory lock
(:mod:`jitgate.storage.locks`), so several ``serve control`` processes share them. Where
the control plane runs, SIGHUP and a change of the policy file reload the policy
(:mod:`jitgate.services.policy`). With more than one gateway worker (``--workers N``),
the gateway runs in N worker processes instead (:mod:`jitgate.workers`), and the main
process keeps the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator

import uvicorn
import uvloop
from aiohttp import web

from jitgate.clock import SystemClock
from jitgate.config import Settings
from jitgate.control.app import create_app
from jitgate.demo.fixture import set_up_demo
from jitgate.demo.upstream import create_upstream
from jitgate.gateway.revocations import RevocationTable
from jitgate.gateway.view import ENDED_GRACE
from jitgate.services import access, audit, grants
from jitgate.services.context import Context
from jitgate.services.policy import PolicyWatcher, Trigger, reload_in_background
from jitgate.serving import bind, every, serve_aiohttp, split_listen, start_gateway, wait_for_signal
from jitgate.storage.locks import JobLocks, exclusive, job_locks
from jitgate.wiring import Runtime, build
from jitgate.workers import WorkerPool

log = logging.getLogger(__name__)

Sockets = dict[str, socket.socket]
OnReady = Callable[[Runtime, dict[str, str] | None], None]


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


def gateway_workers(settings: Settings, workers: int | None, *, control: bool) -> int:
    """``--workers``, else ``gateway.workers``, else one beside a control plane (``jitgate
    up``: one process, as on the embedded SQLite default) and one per CPU for a gateway
    alone (``serve gateway``)."""
    return workers or settings.gateway.workers or (1 if control else os.cpu_count() or 1)


def _bind_all(
    settings: Settings, *, control: bool, gateway: bool, demo: bool, pooled: bool
) -> Sockets:
    """Every listening socket, bound before anything is written: a busy port stops
    start-up with a clear error and leaves the database (and its audit log) untouched.
    ``pooled``: the gateway's socket only holds the port for the workers (``SO_REUSEPORT``)."""
    wanted = {
        "control": (control, settings.control.listen),
        "gateway": (gateway, settings.gateway.listen),
        "demo": (demo, settings.demo.upstream_listen),
    }
    sockets: Sockets = {}
    try:
        for role, (enabled, listen) in wanted.items():
            if enabled:
                reuse_port = pooled and role == "gateway"
                sockets[role] = bind(*split_listen(listen), listen, reuse_port=reuse_port)
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
    workers: int,
    table: RevocationTable | None,
    on_ready: OnReady | None,
) -> None:
    settings = rt.settings
    runners: list[web.ServerRunner] = []
    tasks: list[asyncio.Task[None]] = []
    pool: WorkerPool | None = None
    locks: JobLocks | None = None
    tokens = None
    try:
        if demo:
            tokens, secret = set_up_demo(
                rt.ctx, settings.state_dir, f"http://{settings.demo.upstream_listen}"
            )
            runners.append(await serve_aiohttp(create_upstream(secret), sockets["demo"]))
        if gateway:
            pool = await _start_gateway(rt, sockets["gateway"], workers, table, runners, tasks)
        if control:
            ctx = rt.ctx
            jobs: list[tuple[float, Callable[[], object], str]] = [
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
            # Each runs in one process at a time, the one holding its lock (on PostgreSQL;
            # on SQLite, in this one): see jitgate.storage.locks.
            locks = job_locks(rt.store.engine)
            tasks.extend(
                asyncio.create_task(every(s, exclusive(locks, n, j), n)) for s, j, n in jobs
            )
        # Not behind a lock: every control process reloads its own policy file.
        if control and rt.ctx.policy_file is not None:
            watcher = PolicyWatcher(rt.ctx, rt.ctx.policy_file)
            tasks.append(asyncio.create_task(every(1.0, watcher.poll, "policy-watch")))
        _reload_on_sighup(rt.ctx if control else None, tasks)
        if control:
            host, port = split_listen(settings.control.listen)
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
            await _until_done(started, pool, lambda: setattr(server, "should_exit", True))
        else:
            if on_ready:
                on_ready(rt, tokens)
            waiting = asyncio.create_task(wait_for_signal())
            await _until_done(waiting, pool, waiting.cancel)
    finally:
        for task in tasks:
            task.cancel()
        if locks is not None:  # the jobs pass to other processes at once
            await asyncio.to_thread(locks.close)
        if pool is not None:
            await pool.stop()
        for runner in runners:
            await runner.cleanup()
        if rt.proxy is not None:
            await rt.proxy.close()


async def _start_gateway(
    rt: Runtime,
    sock: socket.socket,
    workers: int,
    table: RevocationTable | None,
    runners: list[web.ServerRunner],
    tasks: list[asyncio.Task[None]],
) -> WorkerPool | None:
    """The gateway in this process (adding to ``runners`` and ``tasks``), or its workers."""
    if workers > 1:
        host, port = sock.getsockname()[:2]
        handle = table.handle if table is not None else None
        pool = WorkerPool(rt.settings, (host, port), handle, workers)
        await pool.start()
        return pool
    assert rt.proxy is not None
    assert rt.view is not None
    runner, resync = await start_gateway(rt.settings, rt.view, rt.proxy, rt.decisions, sock)
    runners.append(runner)
    tasks.append(resync)
    return None


async def _until_done(
    main: asyncio.Task[None], pool: WorkerPool | None, stop: Callable[[], object]
) -> None:
    """Until ``main`` ends; when the workers fail, ``stop`` it and raise why."""
    if pool is not None:
        await asyncio.wait({main, pool.failed}, return_when=asyncio.FIRST_COMPLETED)
        if pool.failed.done():
            stop()
            with contextlib.suppress(asyncio.CancelledError):
                await main
            pool.failed.result()
    await main


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


def run(
    settings: Settings,
    *,
    control: bool = True,
    gateway: bool = True,
    demo: bool = False,
    workers: int | None = None,
    on_ready: OnReady | None = None,
) -> None:
    """Serve the roles asked for; ``workers``: gateway worker processes (see
    :func:`gateway_workers`), where more than one puts the gateway in its own processes."""
    count = gateway_workers(settings, workers, control=control) if gateway else 0
    pooled = count > 1
    sockets = _bind_all(settings, control=control, gateway=gateway, demo=demo, pooled=pooled)
    table = None
    try:
        if pooled and control:  # the control plane's revocations, shared with the workers
            table = RevocationTable.create(SystemClock(), ENDED_GRACE)
        rt = build(settings, demo=demo, gateway=gateway and not pooled, feed=table)
    except BaseException:
        for sock in sockets.values():
            sock.close()
        if table is not None:
            table.close()
        raise
    # Everything loaded so far lives as long as the process: keep it out of the garbage
    # collector's full passes, which otherwise pause the event loop for 100 ms and more.
    gc.collect()
    gc.freeze()
    try:
        main: Awaitable[None] = _run(
            rt,
            sockets,
            control=control,
            gateway=gateway,
            demo=demo,
            workers=count,
            table=table,
            on_ready=on_ready,
        )
        with contextlib.suppress(KeyboardInterrupt):
            uvloop.run(main)  # type: ignore[arg-type]
    finally:
        rt.close()
        if table is not None:
            table.close()
