"""What every HTTP bench shares: processes, helpers, timed runs, the report's facts.

A bench (``gateway.py``, ``deployments.py``, ``scale.py``, ``streaming.py``, ``workers.py``)
starts its processes through :class:`Processes` (each in its own session, all stopped at
the end, also on errors, Ctrl-C and SIGTERM: see :func:`run_bench`), drives them with one
:class:`LoadGen` (the generators are in ``loadgen.py``), and runs every target once a
round in an order that reverses every round, reporting medians as ratios against a
baseline measured in the same run. Only loopback is targeted; every run is bounded in
time (``-d`` plus a kill timeout) and in requests (``MAX_RATE``).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import httpx

LOOPBACK = "127.0.0.1"
WARMUP_SECONDS = 2.0
MAX_RATE = 500_000  # requests per second per run: the request bound is duration x this
MAX_FAILED_SHARE = 0.01  # more failed calls than this and the run is not a measurement
START_TIMEOUT = 60.0


class BenchError(Exception):
    pass


# ------------------------------------------------------------------ targets and results


@dataclass(frozen=True, slots=True)
class RunResult:
    """One load-generator run against one target."""

    requests: int
    seconds: float
    non_2xx: int
    errors: int
    p50_us: float
    p99_us: float
    cpu_us: dict[str, float] = field(default_factory=dict)  # per request, by process

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def failed(self) -> int:
        return self.non_2xx + self.errors


def median(runs: Sequence[RunResult], value: Callable[[RunResult], float]) -> float:
    values = [v for r in runs if not math.isnan(v := value(r))]
    return statistics.median(values) if values else math.nan


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    url: str
    authorization: str  # sent on every request, unless token_file is set
    response_bytes: int  # body size of one answer, as checked before the runs
    token_file: Path | None = None  # grant tokens (one a line) sent in rotation instead


class LoadGen(Protocol):
    version: str  # for the report

    def run(self, target: Target, connections: int, seconds: float) -> RunResult: ...


# ------------------------------------------------------------------------- processes


class Processes:
    """Every process the bench starts, each in its own session; all stopped on exit."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, name: str, argv: Sequence[str], env: Mapping[str, str]
    ) -> subprocess.Popen[bytes]:
        with (self.log_dir / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                list(argv),
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the bench only; it stops them itself
            )
        self._procs.append(proc)
        return proc

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.log_dir / f"{name}.log"
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop_all(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGCONT)  # a paused process must hear SIGTERM
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in reversed(self._procs):
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        self._procs.clear()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, its threads included (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime and stime, fields 14 and 15 of stat(5)
    return ticks / os.sysconf("SC_CLK_TCK")


def wait_until_ok(
    url: str, proc: subprocess.Popen[bytes], headers: dict[str, str] | None = None
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"the process serving {url} exited with code {proc.returncode}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, headers=headers, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise BenchError(f"{url} did not answer 200 within {START_TIMEOUT:.0f}s")


def checked_target(
    name: str, url: str, authorization: str, path: str, token_file: Path | None = None
) -> Target:
    """A target after one call that must answer 200 from the upstream's ``path``."""
    answer = httpx.get(url, headers={"Authorization": authorization}, timeout=5)
    if answer.status_code != 200 or answer.json().get("path") != path:
        raise BenchError(f"{name}: GET {url}: {answer.status_code} {answer.text[:300]}")
    return Target(name, url, authorization, len(answer.content), token_file)


def apt_install(package: str, executable: str) -> str | None:
    """Install a Debian package (root only) and return the path of ``executable``."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def apt(*args: str) -> None:
        subprocess.run(["apt-get", *args], env=env, capture_output=True, timeout=300, check=False)

    print(f"{executable} is not installed; installing the Debian package {package!r} (root) ...")
    apt("install", "-y", "-q", package)
    if shutil.which(executable) is None:  # the package lists may be missing or stale
        apt("update", "-q")
        apt("install", "-y", "-q", package)
    found = shutil.which(executable)
    print(f"installed {package}." if found else f"could not install {package}.")
    return found


def can_apt() -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


# ---------------------------------------------------------------------------- running


@dataclass(frozen=True, slots=True)
class Plan:
    rounds: int
    connections: int
    seconds: float
    latency_seconds: float  # 0: no run at one connection

    def estimate(self, targets: int) -> float:
        per_round = targets * (self.seconds + self.latency_seconds)
        return 2 * targets * WARMUP_SECONDS + self.rounds * per_round


@dataclass(slots=True)
class Results:
    """Runs by phase ("throughput" at N connections, "latency" at one) and target."""

    runs: dict[tuple[str, str], list[RunResult]] = field(default_factory=dict)

    def add(self, phase: str, target: str, result: RunResult) -> None:
        self.runs.setdefault((phase, target), []).append(result)

    def median(self, phase: str, target: str, value: Callable[[RunResult], float]) -> float:
        return median(self.runs.get((phase, target), []), value)

    def cpu(self, target: str, process: str) -> float:
        """Median CPU time per request of ``process`` while ``target`` was under load."""
        return self.median("throughput", target, lambda r: r.cpu_us[process])


def schedule(names: Sequence[str], rounds: int) -> Iterator[tuple[int, str]]:
    """Every target once a round, the order reversed each round, so drift hits all alike."""
    for i in range(rounds):
        for name in names if i % 2 == 0 else reversed(names):
            yield i + 1, name


def measure(
    gen: LoadGen,
    pids: Mapping[str, int],
    target: Target,
    connections: int,
    seconds: float,
    max_failed_share: float = MAX_FAILED_SHARE,
) -> RunResult:
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    result = gen.run(target, connections, seconds)
    after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    if result.requests == 0:
        raise BenchError(f"{target.name}: no request completed")
    if result.requests >= round(seconds * MAX_RATE) - 1:
        raise BenchError(f"{target.name}: the run hit its request bound; its rate is unknown")
    if result.failed > max_failed_share * result.requests:
        raise BenchError(
            f"{target.name}: {result.non_2xx} non-2xx answers and {result.errors} socket"
            f" errors in {result.requests} requests: not a measurement; a call now:"
            f" {sample_answer(target)}"
        )
    cpu = {name: (after[name] - before[name]) * 1e6 / result.requests for name in after}
    return replace(result, cpu_us=cpu)


def sample_answer(target: Target) -> str:
    """One call's status and body start, to say why calls failed."""
    try:
        answer = httpx.get(target.url, headers={"Authorization": target.authorization}, timeout=5)
    except httpx.TransportError as exc:
        return repr(exc)
    return f"{answer.status_code} {answer.text[:200]!r}"


def run_plan(
    gen: LoadGen,
    pids: Mapping[str, int],
    targets: Mapping[str, Target],
    plan: Plan,
    before_run: Callable[[Target], None] = lambda target: None,
    max_failed_share: float = MAX_FAILED_SHARE,
) -> Results:
    """The warm-up, then ``plan.rounds`` rounds per phase; ``before_run`` precedes each run.

    A run with more than ``max_failed_share`` of failed calls stops the bench."""
    phases = [("throughput", plan.connections, plan.seconds)]
    if plan.latency_seconds > 0:
        phases.append(("latency", 1, plan.latency_seconds))
    print(f"warm-up: {WARMUP_SECONDS:.0f}s per target and phase")
    for target in targets.values():
        for _, connections, _ in phases:
            before_run(target)
            measure(gen, pids, target, connections, WARMUP_SECONDS, max_failed_share)
    results = Results()
    width = max(len(name) for name in targets)
    for phase, connections, seconds in phases:
        for round_no, name in schedule(list(targets), plan.rounds):
            before_run(targets[name])
            r = measure(gen, pids, targets[name], connections, seconds, max_failed_share)
            results.add(phase, name, r)
            cpu = ", ".join(f"{p} {r.cpu_us[p]:,.0f}" for p in pids)
            print(
                f"  {phase:<10} round {round_no}  {name:<{width}} c={connections:<3}"
                f" {r.rps:>8,.0f} req/s  p50 {r.p50_us:>7,.0f} µs  p99 {r.p99_us:>7,.0f} µs"
                f"  CPU µs/req: {cpu}" + (f"  ({r.failed} failed)" if r.failed else "")
            )
    return results


def add_plan_arguments(parser: argparse.ArgumentParser, latency: bool = True) -> None:
    add = parser.add_argument
    add("--duration", type=float, default=10, help="seconds per throughput run (default 10)")
    if latency:
        add("--latency-duration", type=float, default=5, help="seconds per c=1 run (default 5)")
    add("--connections", type=int, default=32, help="connections for throughput (default 32)")
    add("--rounds", type=int, default=2, help="rounds over the targets (default 2)")
    add("--loadgen", choices=("auto", "wrk", "aiohttp"), default="auto", help="default: auto")


def plan_from(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Plan:
    """The plan of :func:`add_plan_arguments`' options, each within its bounds."""
    latency = float(getattr(args, "latency_duration", 0))
    if not 1 <= args.duration <= 120 or not 0 <= latency <= 120:
        parser.error("durations must lie between 1 and 120 seconds")
    if not 1 <= args.connections <= 1024:
        parser.error("--connections must lie between 1 and 1024")
    if not 1 <= args.rounds <= 9:
        parser.error("--rounds must lie between 1 and 9")
    return Plan(args.rounds, args.connections, args.duration, latency)


# ----------------------------------------------------------------------------- report


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown CPU"


def cpu_busy(seconds: float = 1.0) -> float:
    """The share of all CPUs busy over ``seconds`` (Linux ``/proc/stat``), NaN elsewhere."""

    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + values[4]  # idle and iowait
        return sum(values) - idle, sum(values)

    try:
        busy0, total0 = sample()
        time.sleep(seconds)
        busy1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return math.nan
    return (busy1 - busy0) / max(total1 - total0, 1)


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "unknown"


def machine() -> str:
    return (
        f"{os.cpu_count()} CPUs ({cpu_model()}), {platform.system()} {platform.release()},"
        f" Python {platform.python_version()}"
    )


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b and not math.isnan(a) and not math.isnan(b) else "n/a"


def verdict(met: bool) -> str:
    return "MET" if met else "NOT MET"


# ------------------------------------------------------------------------------- main


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_bench(body: Callable[[Path, Processes, str], None]) -> int:
    """Run ``body(work_dir, processes, load_before)``; stop everything it started, always.

    ``load_before`` is the load average and CPU share busy before the bench began, for the
    report; a warning is printed when the machine was already busy.
    """
    for signum in (signal.SIGINT, signal.SIGTERM):  # also when started with SIGINT ignored
        signal.signal(signum, _interrupt)
    busy = cpu_busy()
    load = f"{load_average()}, {busy:.0%} CPU busy"
    if busy > 0.2:
        print(f"warning: {busy:.0%} of the CPUs were busy before the bench started:")
        print("other work on this machine will skew the figures.")
    with tempfile.TemporaryDirectory(prefix="jitgate-bench-") as tmp:
        procs = Processes(Path(tmp))
        try:
            body(Path(tmp), procs, load)
        except BenchError as exc:
            print(f"bench failed: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted: stopping everything the bench started", file=sys.stderr)
            return 130
        finally:
            procs.stop_all()
    return 0
