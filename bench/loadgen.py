"""The load generators the benches drive, and the choice between them.

``wrk -t1`` with a Lua script that bounds the request count and reports JSON, or, when
``wrk`` is missing (or asked for), a closed-loop aiohttp generator in its own process:
this file, re-run as ``--loadgen-child``. Both bound a run in time and in requests
(``MAX_RATE``) and implement :class:`harness.LoadGen`.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import (
    MAX_RATE,
    BenchError,
    LoadGen,
    RunResult,
    Target,
    apt_install,
    can_apt,
)

# wrk calls request() for every request. With BENCH_TOKEN_FILE it cycles through the
# tokens of that file (one a line) in the Authorization header, formatting each request;
# otherwise it returns the request built once in init(). It counts, stops the thread at
# the request bound, and done() reports JSON (microseconds).
WRK_SCRIPT = """\
local authorization = os.getenv("BENCH_AUTHORIZATION")
local token_file = os.getenv("BENCH_TOKEN_FILE")
local max_requests = tonumber(os.getenv("BENCH_MAX_REQUESTS") or "0")
local sent = 0
local prepared = nil
local tokens = {}

function init(args)
  if token_file and token_file ~= "" then
    for line in io.lines(token_file) do
      tokens[#tokens + 1] = "Bearer " .. line
    end
  elseif authorization and authorization ~= "" then
    wrk.headers["Authorization"] = authorization
  end
  prepared = wrk.format("GET", wrk.path)
end

function request()
  sent = sent + 1
  if max_requests > 0 and sent >= max_requests then
    wrk.thread:stop()
  end
  if #tokens > 0 then
    return wrk.format("GET", wrk.path, {Authorization = tokens[(sent % #tokens) + 1]})
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
            "BENCH_TOKEN_FILE": str(target.token_file or ""),
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
            "token_file": str(target.token_file or ""),
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


def _headers(spec: dict[str, Any]) -> list[dict[str, str]]:
    """The headers of each request in turn: one Authorization, or the file's tokens."""
    if spec["token_file"]:
        tokens = Path(spec["token_file"]).read_text().split()
        return [{"Authorization": f"Bearer {t}"} for t in tokens]
    return [{"Authorization": spec["authorization"]} if spec["authorization"] else {}]


async def _closed_loop(spec: dict[str, Any], headers: list[dict[str, str]]) -> dict[str, Any]:
    import aiohttp  # noqa: PLC0415 - only the fallback child needs it

    url: str = spec["url"]
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
                    async with session.get(url, headers=headers[budget % len(headers)]) as answer:
                        await answer.read()
                        if not 200 <= answer.status < 300:
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


def choose_loadgen(wanted: str, work: Path) -> LoadGen:
    if wanted == "aiohttp":
        return AiohttpLoadGen()
    executable = shutil.which("wrk")
    if executable is None and can_apt():
        executable = apt_install("wrk", "wrk")
    if executable is None:
        if wanted == "wrk":
            raise BenchError("wrk is not installed (apt-get install wrk), and --loadgen wrk")
        print("wrk is unavailable: falling back to the aiohttp load generator (weaker: its")
        print("own CPU cost caps the throughput it can show, for every target alike).")
        return AiohttpLoadGen()
    script = work / "bench.lua"
    script.write_text(WRK_SCRIPT)
    return Wrk(executable, script)


if __name__ == "__main__" and sys.argv[1:2] == ["--loadgen-child"]:
    import uvloop

    child_spec = json.loads(sys.argv[2])
    print(json.dumps(uvloop.run(_closed_loop(child_spec, _headers(child_spec)))))
