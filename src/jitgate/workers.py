"""Gateway worker processes: ``--workers N`` (``gateway.workers``).

Process model:

* The main process binds the gateway address once, with ``SO_REUSEPORT``, and never
  listens on that socket: it holds the port (a busy port stops start-up before anything
  is written) and names it to the workers. Each worker binds its own ``SO_REUSEPORT``
  socket to that address and listens on it; the kernel spreads new connections over the
  workers evenly, where one shared listening socket would leave the spread to whichever
  event loop wakes first.
* Workers are spawned, not forked: by then the main process has threads, which a fork
  does not carry over safely. Each builds its own database connections, audit writer and
  view (:func:`jitgate.wiring.build_worker`), and says on a pipe when it is serving.
* Where the control plane runs in the main process (``jitgate up``), its change feed is a
  shared :class:`~jitgate.gateway.revocations.RevocationTable`: every worker consults it
  on every call, so a revocation is in force in every worker when the revoke call
  returns. API and key changes move a counter that a worker checks every
  ``CHANGES_POLL`` seconds, and then reloads from the database. Every worker also
  resyncs on its own, as any gateway does, and fails closed when stale.
* Usage limits (``max_calls``, ``rate``) hold for the gateway as a whole: the pool creates
  a :class:`~jitgate.gateway.usage.SharedUsageMeter` before it spawns any worker, every
  worker (a replacement too) counts in it under one cross-process lock, and it lives as
  long as the pool, so a replaced worker neither resets nor re-seeds a grant's count.
* Workers die with the main process: each watches its parent's sentinel, which becomes
  readable once the parent is gone for any reason (SIGKILL included), and then stops.
  Each has a process group of its own, so that Ctrl-C (or a signal to the group) reaches
  the main process alone, which stops the workers itself.
* A worker that dies after it was serving is replaced, and the death is logged as an
  error (one line, with the delay if there is one). A crash loop must not spin, spawning
  an interpreter and opening database connections as fast as it can: per worker slot,
  a worker that dies less than ``Backoff.quick`` (30 s) after it was serving is a quick
  death, and its replacement waits ``Backoff.first`` (1 s), doubling with each quick
  death in a row up to ``Backoff.cap`` (30 s); a worker that served longer is replaced
  at once and clears its slot's count. While a slot waits, the other workers serve (the
  kernel only spreads connections over listening sockets). When every slot has died
  quickly ``Backoff.give_up`` (5) times in a row, none serving longer since, the gateway
  is down for good: the pool fails (:attr:`WorkerPool.failed`) as a start-up failure
  does, so that the process exits and its supervisor (systemd, Kubernetes) sees it,
  restarts it with its own back-off and alerts, where a process that stays up serving
  nothing would look healthy to it. One slot in a loop retries for as long as it takes.
* A worker that cannot start (at start-up, or as a replacement) fails the whole process
  loudly: a start-up failure would only repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import socket
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

import uvloop

from jitgate.clock import Clock, SystemClock
from jitgate.config import Settings
from jitgate.errors import JitgateError
from jitgate.gateway.revocations import RevocationTable, TableHandle
from jitgate.gateway.usage import SharedUsageMeter, UsageHandle
from jitgate.gateway.view import GatewayView
from jitgate.serving import bind, start_gateway
from jitgate.wiring import WorkerRuntime, build_worker

log = logging.getLogger(__name__)

START_TIMEOUT = 60.0  # seconds for a worker to be serving
STOP_TIMEOUT = 10.0  # seconds for a worker to stop after SIGTERM, before SIGKILL
CHANGES_POLL = 0.02  # seconds between looks at the shared change counter
_SPAWN = multiprocessing.get_context("spawn")


class WorkerFailed(JitgateError):  # noqa: N818 - reads as the problem it names
    """A gateway worker could not start."""

    code = "worker-failed"


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long a dead worker's replacement waits, so that a crash loop does not spin."""

    quick: float = 30.0  # seconds: a worker that served less than this died quickly
    first: float = 1.0  # seconds to wait after the first quick death in a row
    cap: float = 30.0  # the longest wait
    give_up: int = 5  # every slot died quickly this many times in a row: the pool fails

    def delay(self, streak: int) -> float:
        """The wait before a replacement, after ``streak`` quick deaths in a row."""
        if streak <= 0:
            return 0.0
        return min(self.first * 2.0 ** min(streak - 1, 64), self.cap)  # 2**1024 overflows


CRASH_BACKOFF = Backoff()


@dataclass(slots=True)
class _Slot:
    """One worker slot's record: since when its worker serves, and its quick deaths in a
    row (a worker that served ``quick`` seconds or more clears them when it dies)."""

    serving_since: float | None = None  # the clock's monotonic time; None when none serves
    streak: int = 0

    def died(self, now: float, backoff: Backoff) -> float:
        """Note its worker's death; how long it had served."""
        served = now - self.serving_since if self.serving_since is not None else 0.0
        self.serving_since = None
        self.streak = self.streak + 1 if served < backoff.quick else 0
        return served

    def looping(self, now: float, backoff: Backoff) -> bool:
        """Died quickly ``give_up`` times in a row, with no worker serving long since."""
        serving_long = self.serving_since is not None and now - self.serving_since >= backoff.quick
        return self.streak >= backoff.give_up and not serving_long


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What a worker is started with (it crosses the spawn, so it is picklable)."""

    settings: Settings
    host: str
    port: int
    table: TableHandle | None  # the control plane's revocations; None without one
    index: int
    usage: UsageHandle  # the usage table all the workers of this pool count in


# ------------------------------------------------------------------ the main process


class WorkerPool:
    """Starts ``count`` workers, replaces those that die (after a back-off when they die
    soon after they started serving), stops them all; owns the usage table they share.
    ``failed`` holds why the pool gave up, if it does; ``clock`` times how long each
    worker served."""

    def __init__(
        self,
        settings: Settings,
        address: tuple[str, int],
        table: TableHandle | None,
        count: int,
        *,
        backoff: Backoff = CRASH_BACKOFF,
        clock: Clock | None = None,
    ) -> None:
        self._usage = SharedUsageMeter.create()
        handle = self._usage.handle
        self._specs = [WorkerSpec(settings, *address, table, i, handle) for i in range(count)]
        self._backoff = backoff
        self._clock = clock or SystemClock()
        self._slots = [_Slot() for _ in range(count)]
        self._procs: dict[int, BaseProcess] = {}
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def start(self) -> None:
        """Every worker, serving; :class:`WorkerFailed` (and none left running) if one
        cannot start."""
        try:
            async with asyncio.TaskGroup() as group:  # one fails: the others are cancelled
                for spec in self._specs:
                    group.create_task(self._start(spec))
        except ExceptionGroup as failed:
            await self.stop()
            raise failed.exceptions[0] from None
        except BaseException:
            await self.stop()
            raise

    async def _start(self, spec: WorkerSpec) -> None:
        reader, writer = _SPAWN.Pipe(duplex=False)
        proc = _SPAWN.Process(
            target=_worker_main, args=(spec, writer), name=f"jitgate-gateway-{spec.index}"
        )
        proc.daemon = True  # also ended by multiprocessing when this process exits
        proc.start()
        writer.close()
        self._procs[spec.index] = proc
        try:
            outcome = await _wait_ready(reader, proc.sentinel)
        finally:
            reader.close()
        if outcome != "ready":
            proc.join(STOP_TIMEOUT if outcome == "exited" else 0)
            if proc.is_alive():
                proc.kill()
                proc.join(STOP_TIMEOUT)
            state = f"exited with code {proc.exitcode}" if outcome == "exited" else outcome
            raise WorkerFailed(
                f"gateway worker {spec.index} {state} before it was serving (its log says why)"
            )
        log.info("gateway worker %d is serving (pid %d)", spec.index, proc.pid)
        self._slots[spec.index].serving_since = self._clock.monotonic()
        asyncio.get_running_loop().add_reader(proc.sentinel, self._exited, spec, proc)

    def _exited(self, spec: WorkerSpec, proc: BaseProcess) -> None:
        asyncio.get_running_loop().remove_reader(proc.sentinel)
        if self._stopping:
            return
        task = asyncio.create_task(self._replace(spec, proc))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replace(self, spec: WorkerSpec, proc: BaseProcess) -> None:
        slot = self._slots[spec.index]
        served = slot.died(self._clock.monotonic(), self._backoff)
        # The sentinel can be readable a moment before the exit status is: wait for it,
        # off the event loop (a process that somehow lives on is killed).
        await asyncio.to_thread(proc.join, STOP_TIMEOUT)
        if proc.is_alive():
            proc.kill()
            await asyncio.to_thread(proc.join, STOP_TIMEOUT)
        pid, code = proc.pid, proc.exitcode
        with contextlib.suppress(ValueError):  # still running after SIGKILL: leave it be
            proc.close()
        if self._procs.get(spec.index) is proc:
            del self._procs[spec.index]
        now = self._clock.monotonic()
        if all(other.looping(now, self._backoff) for other in self._slots):
            log.error(
                "gateway worker %d (pid %d) exited with code %s %.1f s after it was serving;"
                " every worker has now died within %g s of serving %d times in a row",
                spec.index,
                pid,
                code,
                served,
                self._backoff.quick,
                self._backoff.give_up,
            )
            self._fail(
                WorkerFailed(
                    f"every gateway worker died within {self._backoff.quick:g} s of serving,"
                    f" {self._backoff.give_up} times in a row (their log says why)"
                )
            )
            return
        delay = self._backoff.delay(slot.streak)
        if delay:
            log.error(
                "gateway worker %d (pid %d) exited with code %s; starting another in %g s"
                " (it served %.1f s; %d in a row served under %g s)",
                spec.index,
                pid,
                code,
                delay,
                served,
                slot.streak,
                self._backoff.quick,
            )
            await asyncio.sleep(delay)  # cancelled by stop()
        else:
            log.error(
                "gateway worker %d (pid %d) exited with code %s; starting another",
                spec.index,
                pid,
                code,
            )
        try:
            await self._start(spec)
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if not self.failed.done():
            self.failed.set_exception(exc)

    async def stop(self) -> None:
        """SIGTERM to every worker (they finish their audit batches), SIGKILL after
        ``STOP_TIMEOUT``."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        loop = asyncio.get_running_loop()
        procs = list(self._procs.values())
        self._procs.clear()
        for proc in procs:
            with contextlib.suppress(ValueError):  # closed already
                loop.remove_reader(proc.sentinel)
                if proc.is_alive():
                    proc.terminate()
        await asyncio.to_thread(_reap, procs)
        self._usage.close()
        if not self.failed.done():
            self.failed.cancel()


async def _wait_ready(reader: Connection, sentinel: int) -> str:
    """``ready`` once the worker says it is serving; ``exited`` if it ended first;
    ``timed out`` after ``START_TIMEOUT``."""
    loop = asyncio.get_running_loop()
    woken = loop.create_future()

    def wake() -> None:
        if not woken.done():
            woken.set_result(None)

    for fd in (reader.fileno(), sentinel):
        loop.add_reader(fd, wake)
    try:
        async with asyncio.timeout(START_TIMEOUT):
            await woken
    except TimeoutError:
        return "timed out"
    finally:
        for fd in (reader.fileno(), sentinel):
            loop.remove_reader(fd)
    try:
        said = reader.recv_bytes() if reader.poll() else b""
    except EOFError:
        said = b""
    return "ready" if said == b"ready" else "exited"


def _reap(procs: list[BaseProcess]) -> None:
    for proc in procs:
        with contextlib.suppress(ValueError):  # closed already
            proc.join(STOP_TIMEOUT)
            if proc.is_alive():
                log.error("gateway worker pid %d did not stop; killing it", proc.pid)
                proc.kill()
                proc.join(STOP_TIMEOUT)
            proc.close()


# ------------------------------------------------------------------------ the worker


def _worker_main(spec: WorkerSpec, ready: Connection) -> None:
    from jitgate.logs import configure  # noqa: PLC0415 - in the spawned interpreter

    # A process group of its own: Ctrl-C or a signal to the main process's group reaches
    # the main process only, which then stops its workers itself (and does not take their
    # exit for a crash to repair).
    os.setpgid(0, 0)
    configure(spec.settings.log_level)
    listen = f"{spec.host}:{spec.port}"
    sock = bind(spec.host, spec.port, listen, reuse_port=True)
    table = RevocationTable.attach(spec.table) if spec.table is not None else None
    usage = SharedUsageMeter.attach(spec.usage)
    rt = build_worker(spec.settings, table, usage)
    gc.collect()
    gc.freeze()  # as in the main process: no long collector pauses on the event loop
    try:
        uvloop.run(_serve(rt, sock, table, ready))
    finally:
        rt.close()
        usage.close()
        if table is not None:
            table.close()


async def _serve(
    rt: WorkerRuntime, sock: socket.socket, table: RevocationTable | None, ready: Connection
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # SIGHUP reloads the policy, which the main process holds; a terminal's hang-up
    # reaches the whole process group, and must not end a worker.
    loop.add_signal_handler(signal.SIGHUP, lambda: None)
    parent = multiprocessing.parent_process()
    assert parent is not None, "a worker is always spawned"
    loop.add_reader(parent.sentinel, stop.set)
    runner, resync = await start_gateway(rt.settings, rt.view, rt.proxy, rt.decisions, sock)
    tasks = [resync]
    if table is not None:
        tasks.append(asyncio.create_task(_follow_changes(table, rt.view)))
    ready.send_bytes(b"ready")
    ready.close()
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await runner.cleanup()
        await rt.proxy.close()


async def _follow_changes(table: RevocationTable, view: GatewayView) -> None:
    """Reload from the database soon after the control plane changed APIs or keys."""
    seen = table.changes
    while True:
        await asyncio.sleep(CHANGES_POLL)
        if table.changes == seen:
            continue
        seen = table.changes  # read before the reload: a change after it is seen next time
        try:
            await asyncio.to_thread(view.resync)
        except Exception:
            log.exception("reloading after an API or key change failed")
