"""Gateway overhead: a small GET through the jitgate gateway versus straight to the upstream.

Method. One upstream process serves ``jitgate.demo.upstream`` (aiohttp on uvloop) with a
secret the bench chooses. A real ``jitgate up --demo`` runs in its own process (temporary
state directory, free loopback ports, a bench policy that lets ``engineering`` read the
APIs ``demo`` and ``bench`` at once). The bench registers that same upstream in jitgate as
the API ``bench`` (admin token), asks for ``GET /**`` on it as alice and gets a grant
token, all through the control-plane HTTP API. Then the same load generator, in its own
process, sends the same small GET:

* direct:  ``GET http://127.0.0.1:<upstream>/v1/ping`` with the upstream's secret;
* gateway: ``GET http://127.0.0.1:<gateway>/bench/v1/ping`` with the grant token, which
  the gateway verifies, checks, audits and forwards (injecting the secret) to that very
  upstream process.

Throughput is measured at ``--connections`` connections (default 32, like
``wrk -t1 -c32``) and latency at one connection, where nothing queues and the
difference is the time the gateway adds to one call. Runs alternate direct and gateway
and swap their order every round (ABBA), after a short warm-up of each; the medians are
reported, and every figure is printed as a ratio against the direct baseline measured
in the same run, because the absolute numbers depend on the machine and its noise. The
CPU time that the upstream and the jitgate process spend per request (from
``/proc/<pid>/stat``) is reported too: it is less sensitive to scheduling than req/s on
a small machine where load generator, gateway and upstream share the cores.

The load generator is ``wrk`` (``-t1 --latency``, with a Lua script that sets the
``Authorization`` header and reports JSON). If ``wrk`` is missing and the bench runs as
root, it installs the Debian package ``wrk`` (and says so); otherwise, or with
``--loadgen aiohttp``, it falls back to a closed-loop aiohttp generator in a separate
process with the same number of connections. Every run is bounded in time and in
request count; only loopback (127.0.0.1) is targeted; everything the bench starts is
stopped at the end, also on errors and Ctrl-C.

Run it with ``make bench`` (or ``.venv/bin/python bench/gateway.py --help``).
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
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx

LOOPBACK = "127.0.0.1"
UPSTREAM_SECRET = "bench-upstream-secret"  # noqa: S105 - a throwaway key for a loopback upstream
BENCH_API = "bench"
PATH = "/v1/ping"
WARMUP_SECONDS = 2.0
MAX_REQUESTS_PER_RUN = 3_000_000  # far above what one run reaches; a safety bound
MAX_ERROR_SHARE = 0.01  # more failed calls than this and the run is not a measurement
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
    runner = web.ServerRunner(
        create_upstream(Secret(secret)), handle_signals=False, access_log=None
    )
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
    await asyncio.Event().wait()

uvloop.run(main(int(sys.argv[1]), sys.argv[2]))
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
    cpu_us_per_request: float | None = None  # of the process serving the target

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def failed_share(self) -> float:
        return (self.non_2xx + self.errors) / max(self.requests, 1)


@dataclass(slots=True)
class Series:
    """The runs of one (target, connections) pair, and their medians."""

    runs: list[RunResult] = field(default_factory=list)

    def median(self, attr: str) -> float:
        values = [getattr(r, attr) for r in self.runs]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else math.nan


@dataclass(frozen=True, slots=True)
class Target:
    name: str  # "direct" or "gateway"
    url: str
    authorization: str
    pid: int  # the process that serves it (for CPU time)


class LoadGen(Protocol):
    name: str

    def run(self, target: Target, connections: int, seconds: float) -> RunResult: ...


# ------------------------------------------------------------------------- processes


class Processes:
    """Every process the bench starts, each in its own session; all stopped on exit."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self._log_dir / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            list(argv),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the bench only; it stops them itself
        )
        log.close()
        self._procs.append((name, proc))
        return proc

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self._log_dir / f"{name}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop_all(self) -> None:
        for _, proc in reversed(self._procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, proc in reversed(self._procs):
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
    """User + system CPU time of a process so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
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


class BenchError(Exception):
    pass


# --------------------------------------------------------------------- load generators


class Wrk:
    """``wrk -t1 -cN -dS --latency`` with a Lua script; one thread, like the reference."""

    name = "wrk"

    def __init__(self, executable: str, script: Path) -> None:
        self.executable = executable
        self.script = script
        self.version = self._version()

    def _version(self) -> str:
        done = subprocess.run(
            [self.executable, "--version"], capture_output=True, text=True, check=False
        )
        words = (done.stdout + done.stderr).split()
        return f"wrk {words[1]}" if len(words) > 1 else "wrk"

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
            "BENCH_MAX_REQUESTS": str(MAX_REQUESTS_PER_RUN),
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

    name = "aiohttp closed loop (fallback)"
    version = "aiohttp"

    def run(self, target: Target, connections: int, seconds: float) -> RunResult:
        spec = {
            "url": target.url,
            "authorization": target.authorization,
            "connections": connections,
            "seconds": seconds,
            "max_requests": MAX_REQUESTS_PER_RUN,
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
    deadline = time.perf_counter() + float(spec["seconds"])
    budget = int(spec["max_requests"])
    latencies: list[int] = []
    counts = {"non_2xx": 0, "errors": 0}
    connector = aiohttp.TCPConnector(limit=int(spec["connections"]), force_close=False)
    timeout = aiohttp.ClientTimeout(total=5)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

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
        await asyncio.gather(*(worker() for _ in range(int(spec["connections"]))))
        elapsed = time.perf_counter() - began
    latencies.sort()

    def pct(p: float) -> float:
        if not latencies:
            return math.nan
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] / 1000

    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "non_2xx": counts["non_2xx"],
        "errors": counts["errors"],
        "p50_us": pct(50),
        "p99_us": pct(99),
    }


def loadgen_child(spec_json: str) -> None:
    import uvloop  # noqa: PLC0415 - only the fallback child needs it

    print(json.dumps(uvloop.run(_closed_loop(json.loads(spec_json)))))


def choose_loadgen(wanted: str, work: Path) -> LoadGen:
    if wanted == "aiohttp":
        return AiohttpLoadGen()
    executable = shutil.which("wrk")
    if executable is None and os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk is not installed; installing the Debian package 'wrk' (running as root) ...")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        quiet = {"capture_output": True, "env": env, "check": False, "timeout": 300}
        installed = subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], **quiet)  # type: ignore[call-overload]
        if installed.returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], **quiet)  # type: ignore[call-overload]
            subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], **quiet)  # type: ignore[call-overload]
        executable = shutil.which("wrk")
        print("installed wrk." if executable else "could not install wrk.")
    if executable is None:
        if wanted == "wrk":
            raise BenchError("wrk is not installed (apt-get install wrk), and --loadgen wrk")
        print("wrk is unavailable: falling back to the aiohttp load generator (weaker: its")
        print("own CPU cost caps the throughput it can show, on both sides alike).")
        return AiohttpLoadGen()
    script = work / "bench.lua"
    script.write_text(WRK_SCRIPT)
    return Wrk(executable, script)


# ---------------------------------------------------------------------------- jitgate


@dataclass(frozen=True, slots=True)
class Setup:
    direct: Target
    gateway: Target


def jitgate_executable() -> list[str]:
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


def start_everything(procs: Processes, work: Path, grant_minutes: int) -> Setup:
    upstream_port, control_port, gateway_port, demo_port = (free_port() for _ in range(4))
    env = {k: v for k, v in os.environ.items() if not k.startswith("JITGATE_")}

    upstream = procs.start(
        "upstream",
        [sys.executable, "-c", UPSTREAM_SCRIPT, str(upstream_port), UPSTREAM_SECRET],
        env,
    )
    upstream_url = f"http://{LOOPBACK}:{upstream_port}"
    direct_auth = f"Bearer {UPSTREAM_SECRET}"
    wait_until_ok(upstream_url + PATH, upstream, {"Authorization": direct_auth})

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
    jitgate = procs.start("jitgate", [*jitgate_executable(), "up", "--demo"], jitgate_env)
    control = f"http://{LOOPBACK}:{control_port}"
    gateway = f"http://{LOOPBACK}:{gateway_port}"
    try:
        wait_until_ok(control + "/healthz", jitgate)
        wait_until_ok(gateway + "/healthz", jitgate)
    except BenchError as exc:
        raise BenchError(f"{exc}\n--- jitgate log ---\n{procs.log_tail('jitgate')}") from exc

    tokens = json.loads((state / "demo-tokens.json").read_text())
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
                "description": "bench/gateway.py: the direct baseline's upstream",
            },
        )
        request = call(
            client,
            "POST",
            f"{control}/v1/requests",
            tokens["alice"],
            {
                "api": BENCH_API,
                "scopes": ["GET /**"],
                "duration": f"{grant_minutes}m",
                "reason": "bench",
            },
        )
        if not request.get("grant"):
            raise BenchError(f"the bench request was not granted at once: {request}")
        grant_id = request["grant"]["id"]
        issued = call(client, "POST", f"{control}/v1/grants/{grant_id}/token", tokens["alice"], {})
    gateway_auth = f"Bearer {issued['token']}"

    # One checked call each way: both must be 200 and echo the same upstream path.
    checks = ((upstream_url + PATH, direct_auth), (f"{gateway}/{BENCH_API}{PATH}", gateway_auth))
    for url, auth in checks:
        answer = httpx.get(url, headers={"Authorization": auth}, timeout=5)
        if answer.status_code != 200 or answer.json().get("path") != PATH:
            raise BenchError(f"GET {url}: {answer.status_code} {answer.text[:300]}")

    return Setup(
        direct=Target("direct", upstream_url + PATH, direct_auth, upstream.pid),
        gateway=Target("gateway", f"{gateway}/{BENCH_API}{PATH}", gateway_auth, jitgate.pid),
    )
