"""Gateway overhead: a small GET through the jitgate gateway versus straight to the upstream.

Method. One upstream process serves ``jitgate.demo.upstream`` (aiohttp on uvloop) with a
secret the bench chooses. A real ``jitgate up --demo`` runs in its own process (temporary
state directory, free loopback ports, a bench policy that lets ``engineering`` read the
APIs ``demo`` and ``bench`` at once). The bench registers that same upstream in jitgate as
the API ``bench`` (admin token) and, as alice, asks for ``GET /**`` on it and gets a
grant token, all through the control-plane HTTP API. Then one load generator, in its own
process, sends the same small GET three ways, all answered by that one upstream process:

* direct:  ``GET /v1/ping`` to the upstream, with its secret (the baseline);
* proxy:   the same GET through a bare aiohttp reverse proxy (its own process) that
  forwards and streams exactly as the gateway does but checks and records nothing, so
  that "the cost of any Python proxy hop" and "the cost of jitgate" can be told apart;
* gateway: ``GET /bench/v1/ping`` to the jitgate gateway with the grant token, which it
  verifies, checks (revocation, time, scope), audits and forwards, injecting the secret.

Throughput is measured at ``--connections`` connections (default 32, like
``wrk -t1 -c32``) and latency at one connection, where nothing queues and the
difference is the time a hop adds to one call. Each round runs every target once, in
an order that reverses every round (ABC, CBA, ...), after a short warm-up of each;
medians are reported, and every figure is printed as a ratio against the direct
baseline measured in the same run, because absolute numbers depend on the machine and
its noise. The CPU time that each process spends per request (from ``/proc/<pid>/stat``)
is reported too: it suffers less than req/s from scheduling on a small machine where
load generator, proxy and upstream share the cores.

The load generator is ``wrk`` (``-t1 --latency``, with a Lua script that sets the
``Authorization`` header, bounds the request count and reports JSON). If ``wrk`` is
missing and the bench runs as root, it installs the Debian package ``wrk`` (and says
so); otherwise, or with ``--loadgen aiohttp``, it falls back to a closed-loop aiohttp
generator in a separate process with the same number of connections. Every run is
bounded in time and in request count; only loopback (127.0.0.1) is targeted; everything
the bench starts is stopped at the end, also on errors, Ctrl-C and SIGTERM.

Run it with ``make bench`` (options: ``.venv/bin/python bench/gateway.py --help``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx

LOOPBACK = "127.0.0.1"
UPSTREAM_SECRET = "bench-upstream-secret"  # a throwaway key for a loopback upstream
BENCH_API = "bench"
PATH = "/v1/ping"
TARGETS = ("direct", "proxy", "gateway")
PROCESSES = ("upstream", "proxy", "jitgate")
WARMUP_SECONDS = 2.0
MAX_RATE = 500_000  # requests per second per run: the request bound is duration x this
MAX_FAILED_SHARE = 0.01  # more failed calls than this and the run is not a measurement
START_TIMEOUT = 60.0

BENCH_POLICY = """\
# Written by bench/gateway.py: alice (engineering) reads demo and bench at once.
version: 1
defaults: {max_duration: 1h, pending_ttl: 24h}
rules:
  - name: bench-read
    requesters: {groups: [engineering]}
    apis: [demo, bench]
    scopes: ["GET /**"]
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

# The gateway's forwarding path (jitgate.gateway.proxy) without enforcement, header
# filtering or audit: same server and client classes, settings and streaming.
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

# wrk calls request() for every request: it returns the request built once in init(),
# counts, and stops the thread at the request bound. done() reports JSON (microseconds).
WRK_SCRIPT = """\
local authorization = os.getenv("BENCH_AUTHORIZATION")
local max_requests = tonumber(os.getenv("BENCH_MAX_REQUESTS") or "0")
local sent = 0
local prepared = nil

function init(args)
  if authorization and authorization ~= "" then
    wrk.headers["Authorization"] = authorization
  end
  prepared = wrk.format("GET", wrk.path)
end

function request()
  sent = sent + 1
  if max_requests > 0 and sent >= max_requests then
    wrk.thread:stop()
  end
  return prepared
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "non_2xx": %d, "errors": %d, '
    .. '"p50_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, e.status,
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


class BenchError(Exception):
    pass


# --------------------------------------------------------------------------- results


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
    name: str  # one of TARGETS
    url: str
    authorization: str
    response_bytes: int  # body size of one answer, as checked before the runs


class LoadGen(Protocol):
    version: str  # for the report

    def run(self, target: Target, connections: int, seconds: float) -> RunResult: ...


# ------------------------------------------------------------------------- processes


class Processes:
    """Every process the bench starts, each in its own session; all stopped on exit."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (self._log_dir / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                list(argv),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the bench only; it stops them itself
            )
        self._procs.append(proc)
        return proc

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self._log_dir / f"{name}.log"
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop_all(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
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


# --------------------------------------------------------------------- load generators


class Wrk:
    """``wrk -t1 -cN -dS --latency`` with a Lua script; one thread, like the reference."""

    def __init__(self, executable: str, script: Path) -> None:
        self.executable = executable
        self.script = script
        done = subprocess.run(
            [executable, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
        words = (done.stdout + done.stderr).split()
        self.version = f"wrk {words[1]}" if len(words) > 1 else "wrk"

    def run(self, target: Target, connections: int, seconds: float) -> RunResult:
        argv = [
            self.executable,
            "-t1",
            f"-c{connections}",
            f"-d{max(round(seconds), 1)}s",
            "--timeout",
            "5s",
            "--latency",
            "-s",
            str(self.script),
            target.url,
        ]
        env = {
            **os.environ,
            "BENCH_AUTHORIZATION": target.authorization,
            "BENCH_MAX_REQUESTS": str(round(seconds * MAX_RATE)),
        }
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=seconds + 30, check=False
        )
        for line in done.stdout.splitlines():
            if line.startswith("BENCH_JSON "):
                data = json.loads(line.removeprefix("BENCH_JSON "))
                return RunResult(
                    requests=int(data["requests"]),
                    seconds=int(data["duration_us"]) / 1e6,
                    non_2xx=int(data["non_2xx"]),
                    errors=int(data["errors"]),
                    p50_us=float(data["p50_us"]),
                    p99_us=float(data["p99_us"]),
                )
        raise BenchError(f"wrk failed (exit {done.returncode}): {done.stdout}{done.stderr}")


class AiohttpLoadGen:
    """A closed-loop aiohttp generator in a separate process (this file, ``--loadgen-child``)."""

    version = "aiohttp closed loop (fallback)"

    def run(self, target: Target, connections: int, seconds: float) -> RunResult:
        spec = {
            "url": target.url,
            "authorization": target.authorization,
            "connections": connections,
            "seconds": seconds,
            "max_requests": round(seconds * MAX_RATE),
        }
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--loadgen-child", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"the aiohttp load generator failed: {done.stderr[-2000:]}")
        return RunResult(**json.loads(done.stdout.strip().splitlines()[-1]))


async def _closed_loop(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp  # noqa: PLC0415 - only the fallback child needs it

    url: str = spec["url"]
    headers = {"Authorization": spec["authorization"]} if spec["authorization"] else {}
    connections = int(spec["connections"])
    deadline = time.perf_counter() + float(spec["seconds"])
    budget = int(spec["max_requests"])
    latencies: list[int] = []
    counts = {"non_2xx": 0, "errors": 0}
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=5)
    ) as session:

        async def worker() -> None:
            nonlocal budget
            while budget > 0 and time.perf_counter() < deadline:
                budget -= 1
                started = time.perf_counter_ns()
                try:
                    async with session.get(url, headers=headers) as response:
                        await response.read()
                        if not 200 <= response.status < 300:
                            counts["non_2xx"] += 1
                except (aiohttp.ClientError, TimeoutError):
                    counts["errors"] += 1
                latencies.append(time.perf_counter_ns() - started)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - began
    latencies.sort()

    def percentile(p: float) -> float:
        if not latencies:
            return math.nan
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] / 1000

    return {
        "requests": len(latencies),
        "seconds": elapsed,
        **counts,
        "p50_us": percentile(50),
        "p99_us": percentile(99),
    }


def loadgen_child(spec_json: str) -> None:
    import uvloop  # noqa: PLC0415 - only the fallback child needs it

    print(json.dumps(uvloop.run(_closed_loop(json.loads(spec_json)))))


def apt_install_wrk() -> str | None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def apt(*args: str) -> None:
        subprocess.run(["apt-get", *args], env=env, capture_output=True, timeout=300, check=False)

    apt("install", "-y", "-q", "wrk")
    if shutil.which("wrk") is None:  # the package lists may be missing or stale
        apt("update", "-q")
        apt("install", "-y", "-q", "wrk")
    return shutil.which("wrk")


def choose_loadgen(wanted: str, work: Path) -> LoadGen:
    if wanted == "aiohttp":
        return AiohttpLoadGen()
    executable = shutil.which("wrk")
    if executable is None and os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk is not installed; installing the Debian package 'wrk' (running as root) ...")
        executable = apt_install_wrk()
        print("installed wrk." if executable else "could not install wrk.")
    if executable is None:
        if wanted == "wrk":
            raise BenchError("wrk is not installed (apt-get install wrk), and --loadgen wrk")
        print("wrk is unavailable: falling back to the aiohttp load generator (weaker: its")
        print("own CPU cost caps the throughput it can show, for every target alike).")
        return AiohttpLoadGen()
    script = work / "bench.lua"
    script.write_text(WRK_SCRIPT)
    return Wrk(executable, script)


# --------------------------------------------------------------------------- set-up


@dataclass(frozen=True, slots=True)
class Setup:
    targets: dict[str, Target]  # by name, in TARGETS order
    pids: dict[str, int]  # by process name, see PROCESSES


def jitgate_command() -> list[str]:
    beside = Path(sys.executable).with_name("jitgate")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("jitgate")
    if found:
        return [found]
    raise BenchError("the 'jitgate' command is not installed (run 'make install')")


def call(
    client: httpx.Client, method: str, url: str, token: str, body: dict[str, Any]
) -> dict[str, Any]:
    response = client.request(method, url, json=body, headers={"Authorization": f"Bearer {token}"})
    if response.status_code >= 300:
        raise BenchError(f"{method} {url}: {response.status_code} {response.text[:500]}")
    result: dict[str, Any] = response.json()
    return result


def grant_token(control: str, tokens: dict[str, str], upstream_url: str, minutes: int) -> str:
    """Register the bench upstream as admin; as alice, get a grant on it and its token."""
    with httpx.Client(timeout=10) as client:
        call(
            client,
            "POST",
            f"{control}/v1/apis",
            tokens["admin"],
            {
                "name": BENCH_API,
                "base_url": upstream_url,
                "secret": UPSTREAM_SECRET,
                "environment": "dev",
                "owners": ["approvers"],
                "description": "bench/gateway.py: the upstream of the direct baseline",
            },
        )
        request = call(
            client,
            "POST",
            f"{control}/v1/requests",
            tokens["alice"],
            {"api": BENCH_API, "scopes": ["GET /**"], "duration": f"{minutes}m", "reason": "bench"},
        )
        if not request.get("grant"):
            raise BenchError(f"the bench request was not granted at once: {request}")
        grant_id = request["grant"]["id"]
        issued = call(client, "POST", f"{control}/v1/grants/{grant_id}/token", tokens["alice"], {})
    return str(issued["token"])


def start_everything(procs: Processes, work: Path, grant_minutes: int) -> Setup:
    upstream_port, proxy_port, control_port, gateway_port, demo_port = (
        free_port() for _ in range(5)
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("JITGATE_")}
    upstream_url = f"http://{LOOPBACK}:{upstream_port}"
    secret_auth = f"Bearer {UPSTREAM_SECRET}"

    upstream = procs.start(
        "upstream",
        [sys.executable, "-c", UPSTREAM_SCRIPT, str(upstream_port), UPSTREAM_SECRET],
        env,
    )
    wait_until_ok(upstream_url + PATH, upstream, {"Authorization": secret_auth})
    proxy = procs.start(
        "proxy",
        [sys.executable, "-c", BARE_PROXY_SCRIPT, str(proxy_port), upstream_url, secret_auth],
        env,
    )

    state = work / "state"
    policy = work / "bench-policy.yaml"
    policy.write_text(BENCH_POLICY)
    jitgate_env = {
        **env,
        "JITGATE_STATE_DIR": str(state),
        "JITGATE_CONTROL__LISTEN": f"{LOOPBACK}:{control_port}",
        "JITGATE_GATEWAY__LISTEN": f"{LOOPBACK}:{gateway_port}",
        "JITGATE_DEMO__UPSTREAM_LISTEN": f"{LOOPBACK}:{demo_port}",
        "JITGATE_POLICY_FILE": str(policy),
        "JITGATE_LOG_LEVEL": "warning",
    }
    jitgate = procs.start("jitgate", [*jitgate_command(), "up", "--demo"], jitgate_env)
    control = f"http://{LOOPBACK}:{control_port}"
    gateway = f"http://{LOOPBACK}:{gateway_port}"
    try:
        wait_until_ok(control + "/healthz", jitgate)
        wait_until_ok(gateway + "/healthz", jitgate)
        wait_until_ok(f"http://{LOOPBACK}:{proxy_port}{PATH}", proxy)
    except BenchError as exc:
        raise BenchError(f"{exc}\n--- jitgate log ---\n{procs.log_tail('jitgate')}") from exc
    tokens = json.loads((state / "demo-tokens.json").read_text())
    gateway_auth = f"Bearer {grant_token(control, tokens, upstream_url, grant_minutes)}"

    # The proxy run sends the grant token too (the proxy drops it), so that all but the
    # direct run send the very same bytes.
    urls = {
        "direct": (upstream_url + PATH, secret_auth),
        "proxy": (f"http://{LOOPBACK}:{proxy_port}{PATH}", gateway_auth),
        "gateway": (f"{gateway}/{BENCH_API}{PATH}", gateway_auth),
    }
    targets = {}
    for name, (url, auth) in urls.items():  # one checked call each: 200, same upstream path
        answer = httpx.get(url, headers={"Authorization": auth}, timeout=5)
        if answer.status_code != 200 or answer.json().get("path") != PATH:
            raise BenchError(f"{name}: GET {url}: {answer.status_code} {answer.text[:300]}")
        targets[name] = Target(name, url, auth, len(answer.content))
    pids = {"upstream": upstream.pid, "proxy": proxy.pid, "jitgate": jitgate.pid}
    return Setup(targets, pids)


# ---------------------------------------------------------------------------- running


@dataclass(frozen=True, slots=True)
class Plan:
    rounds: int
    connections: int
    seconds: float
    latency_seconds: float

    @property
    def estimate(self) -> float:
        per_round = len(TARGETS) * (self.seconds + self.latency_seconds)
        return 2 * len(TARGETS) * WARMUP_SECONDS + self.rounds * per_round


@dataclass(slots=True)
class Results:
    """Runs by phase ("throughput" at N connections, "latency" at one) and target."""

    runs: dict[tuple[str, str], list[RunResult]] = field(default_factory=dict)

    def add(self, phase: str, target: str, result: RunResult) -> None:
        self.runs.setdefault((phase, target), []).append(result)

    def median(self, phase: str, target: str, value: Callable[[RunResult], float]) -> float:
        return median(self.runs.get((phase, target), []), value)


def schedule(rounds: int) -> Iterator[tuple[int, str]]:
    """Every target once a round, the order reversed each round, so drift hits all alike."""
    for i in range(rounds):
        for name in TARGETS if i % 2 == 0 else reversed(TARGETS):
            yield i + 1, name


def measure(
    gen: LoadGen, setup: Setup, target: Target, connections: int, seconds: float
) -> RunResult:
    before = {name: cpu_seconds(pid) for name, pid in setup.pids.items()}
    result = gen.run(target, connections, seconds)
    after = {name: cpu_seconds(pid) for name, pid in setup.pids.items()}
    if result.requests == 0:
        raise BenchError(f"{target.name}: no request completed")
    if result.requests >= round(seconds * MAX_RATE) - 1:
        raise BenchError(f"{target.name}: the run hit its request bound; its rate is unknown")
    if result.failed > MAX_FAILED_SHARE * result.requests:
        raise BenchError(
            f"{target.name}: {result.non_2xx} non-2xx answers and {result.errors} socket"
            f" errors in {result.requests} requests: not a measurement"
        )
    cpu = {name: (after[name] - before[name]) * 1e6 / result.requests for name in after}
    return replace(result, cpu_us=cpu)


def run_plan(gen: LoadGen, setup: Setup, plan: Plan) -> Results:
    print(f"warm-up: {WARMUP_SECONDS:.0f}s per target at c={plan.connections} and at c=1")
    for target in setup.targets.values():
        measure(gen, setup, target, plan.connections, WARMUP_SECONDS)
        measure(gen, setup, target, 1, WARMUP_SECONDS)
    results = Results()
    phases = (("throughput", plan.connections, plan.seconds), ("latency", 1, plan.latency_seconds))
    for phase, connections, seconds in phases:
        for round_no, name in schedule(plan.rounds):
            r = measure(gen, setup, setup.targets[name], connections, seconds)
            results.add(phase, name, r)
            cpu = ", ".join(f"{p} {r.cpu_us[p]:,.0f}" for p in PROCESSES)
            print(
                f"  {phase:<10} round {round_no}  {name:<7} c={connections:<3}"
                f" {r.rps:>8,.0f} req/s  p50 {r.p50_us:>7,.0f} µs  p99 {r.p99_us:>7,.0f} µs"
                f"  CPU µs/req: {cpu}" + (f"  ({r.failed} failed)" if r.failed else "")
            )
    return results


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


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b and not math.isnan(a) and not math.isnan(b) else "n/a"


def report(
    gen: LoadGen, setup: Setup, plan: Plan, results: Results, elapsed: float, load: str
) -> str:
    c = plan.connections
    rows: list[tuple[str, str, Callable[[RunResult], float]]] = [
        (f"throughput, c={c} (req/s)", "throughput", lambda r: r.rps),
        ("latency p50, c=1 (µs)", "latency", lambda r: r.p50_us),
        ("latency p99, c=1 (µs)", "latency", lambda r: r.p99_us),
        (f"latency p50, c={c} (µs)", "throughput", lambda r: r.p50_us),
        (f"latency p99, c={c} (µs)", "throughput", lambda r: r.p99_us),
    ]
    t = setup.targets
    lines = [
        "",
        "jitgate gateway benchmark (bench/gateway.py)",
        f"  date       {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; took {elapsed:.0f}s;"
        f" load average before {load}; after {load_average()}",
        f"  machine    {os.cpu_count()} CPUs ({cpu_model()}), {platform.system()}"
        f" {platform.release()}, Python {platform.python_version()}",
        f"  method     {gen.version}, 1 thread; {plan.rounds} rounds, order reversed each"
        f" round, medians; {plan.seconds:.0f}s at c={c}, {plan.latency_seconds:.0f}s at c=1",
        f"  request    GET {PATH}; answer {t['direct'].response_bytes} B direct,"
        f" {t['gateway'].response_bytes} B through the gateway (jitgate.demo.upstream)",
        "",
        f"  {'':<26}{'direct':>9}{'proxy':>9}{'gateway':>9}"
        f"{'gateway/direct':>16}{'gateway/proxy':>15}",
    ]
    for label, phase, value in rows:
        d, p, g = (results.median(phase, name, value) for name in TARGETS)
        lines.append(
            f"  {label:<26}{d:>9,.0f}{p:>9,.0f}{g:>9,.0f}{ratio(g, d):>16}{ratio(g, p):>15}"
        )

    def lat(target: str, which: str) -> float:
        return results.median("latency", target, lambda r: getattr(r, which))

    def cpu(target: str, process: str) -> float:
        return results.median("throughput", target, lambda r: r.cpu_us[process])

    up = cpu("direct", "upstream")
    proxy, jitgate = cpu("proxy", "proxy"), cpu("gateway", "jitgate")
    lines += [
        "",
        "  added latency at c=1 (µs), against direct:"
        f"  proxy p50 {lat('proxy', 'p50_us') - lat('direct', 'p50_us'):+,.0f}"
        f" p99 {lat('proxy', 'p99_us') - lat('direct', 'p99_us'):+,.0f};"
        f"  gateway p50 {lat('gateway', 'p50_us') - lat('direct', 'p50_us'):+,.0f}"
        f" p99 {lat('gateway', 'p99_us') - lat('direct', 'p99_us'):+,.0f}",
        f"  CPU per request at c={c} (µs):  upstream {up:,.0f} (direct),"
        f" {cpu('gateway', 'upstream'):,.0f} (via gateway);  bare proxy {proxy:,.0f}"
        f" ({ratio(proxy, up)}x upstream);  jitgate {jitgate:,.0f} ({ratio(jitgate, up)}x"
        f" upstream, {ratio(jitgate, proxy)}x bare proxy)",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Throughput and latency of a small GET through the jitgate gateway, as"
        " ratios against the same GET straight to the same upstream, measured in the same run.",
    )
    add = parser.add_argument
    add("--duration", type=float, default=10, help="seconds per throughput run (default 10)")
    add("--latency-duration", type=float, default=5, help="seconds per c=1 run (default 5)")
    add("--connections", type=int, default=32, help="connections for throughput (default 32)")
    add("--rounds", type=int, default=2, help="rounds over the three targets (default 2)")
    add("--loadgen", choices=("auto", "wrk", "aiohttp"), default="auto", help="default: auto")
    add("--loadgen-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 120 or not 1 <= args.latency_duration <= 120:
        parser.error("durations must lie between 1 and 120 seconds")
    if not 1 <= args.connections <= 1024:
        parser.error("--connections must lie between 1 and 1024")
    if not 1 <= args.rounds <= 9:
        parser.error("--rounds must lie between 1 and 9")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.loadgen_child:
        loadgen_child(args.loadgen_child)
        return 0
    plan = Plan(args.rounds, args.connections, args.duration, args.latency_duration)
    grant_minutes = min(60, 15 + math.ceil(plan.estimate / 60))  # the policy allows 1h
    for signum in (signal.SIGINT, signal.SIGTERM):  # also when started with SIGINT ignored
        signal.signal(signum, _interrupt)
    busy = cpu_busy()
    started, load = time.monotonic(), f"{load_average()}, {busy:.0%} CPU busy"
    with tempfile.TemporaryDirectory(prefix="jitgate-bench-") as tmp:
        work = Path(tmp)
        procs = Processes(work)
        try:
            gen = choose_loadgen(args.loadgen, work)
            if busy > 0.2:
                print(f"warning: {busy:.0%} of the CPUs were busy before the bench started:")
                print("other work on this machine will skew the figures.")
            print(
                "starting an upstream, a bare proxy and 'jitgate up --demo' on loopback;"
                f" about {plan.estimate:.0f}s of load follows"
            )
            setup = start_everything(procs, work, grant_minutes)
            results = run_plan(gen, setup, plan)
            print(report(gen, setup, plan, results, time.monotonic() - started, load))
        except BenchError as exc:
            print(f"bench failed: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted: stopping everything the bench started", file=sys.stderr)
            return 130
        finally:
            procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
