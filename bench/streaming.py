"""Streaming: a 1 GiB upload and a 1 GiB download through the gateway, memory and speed.

Method. A small streaming upstream (aiohttp on uvloop, its own process) discards what
is uploaded to ``PUT /upload`` (counting it) and generates ``GET /download?bytes=N``
on the fly, so that neither end holds a body; it requires the secret the bench chose.
A bare aiohttp proxy, a real ``jitgate up --demo`` (``stack.py``) and a ``jitgate serve
gateway --workers 2`` on the same database (the process model of a gateway machine)
forward to it, with the upstream registered as the API ``bench`` and alice's grant
token. The bench itself is the client (aiohttp): it uploads 1 GiB from one reused 1 MiB
buffer and reads 1 GiB back, discarding it, four ways: direct (the baseline), through
the bare proxy, through ``up`` (control plane and gateway in one process), through
``serve gateway``; each transfer bounded by a timeout.

Reported: each transfer's throughput (MiB/s) and its ratio against direct, and the
forwarding process's memory (for ``serve gateway``, the larger of its two workers):
resident size before, the largest of samples every 20 ms during the transfer, and the
kernel's high-water mark (``VmHWM``, the true peak since the process started, start-up
included). The issue's target: the gateway process stays under 100 MB resident through
both transfers; it is judged on each way of running the gateway.

Processes and clean-up: ``harness.py``. Run it with ``make bench``
(options: ``.venv/bin/python bench/streaming.py --help``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import uvloop

from harness import (
    LOOPBACK,
    BenchError,
    Processes,
    free_port,
    load_average,
    machine,
    ratio,
    run_bench,
    verdict,
    wait_until_ok,
)
from stack import (
    SECRET_AUTHORIZATION,
    UPSTREAM_SECRET,
    clean_env,
    grant,
    register_api,
    start_bare_proxy,
    start_gateway_alone,
    start_jitgate,
    worker_pids,
)

API = "bench"
CHUNK = 1 << 20
MIB = 1 << 20
MAX_RSS_MB = 100.0  # the bound, in 10^6 bytes
TARGETS = ("direct", "proxy", "gateway", "serve")
GATEWAYS = ("gateway", "serve")  # the targets the memory bound is about
SERVE_WORKERS = 2

STREAMING_UPSTREAM = """\
import asyncio, sys
import uvloop
from aiohttp import web

CHUNK = bytes(256 * 1024)

async def main(port: int, authorization: str) -> None:
    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.headers.get("Authorization") != authorization:
            return web.json_response({"error": "bad credential"}, status=401)
        if request.method == "PUT":
            received = 0
            async for data in request.content.iter_any():
                received += len(data)
            return web.json_response({"received": received})
        size = int(request.query.get("bytes", "0"))
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = size
        await response.prepare(request)
        while size > 0:
            part = CHUNK if size >= len(CHUNK) else CHUNK[:size]
            await response.write(part)
            size -= len(part)
        await response.write_eof()
        return response

    runner = web.ServerRunner(web.Server(handle), handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
    await asyncio.Event().wait()

uvloop.run(main(int(sys.argv[1]), sys.argv[2]))
"""


@dataclass(frozen=True, slots=True)
class Transfer:
    seconds: float
    rss_before: int  # bytes, of the forwarding process (the largest of several; 0: direct)
    rss_peak: int  # largest sample during the transfer
    hwm: int  # VmHWM after it

    def mib_per_s(self, size: int) -> float:
        return size / MIB / self.seconds


def memory(pid: int, field: str) -> int:
    """``VmRSS`` or ``VmHWM`` of a process, in bytes (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no {field} for process {pid}")


async def upload_body(size: int) -> AsyncIterator[bytes]:
    buffer = bytes(CHUNK)
    left = size
    while left > 0:
        part = buffer if left >= CHUNK else buffer[:left]
        yield part
        left -= len(part)


async def transfer(
    url: str, authorization: str, direction: str, size: int, pids: Sequence[int], bound: float
) -> Transfer:
    """One upload (PUT) or download (GET) of ``size`` bytes, within ``bound`` seconds,
    sampling the memory of ``pids`` (the forwarding processes: the largest counts)."""

    def largest(field: str) -> int:
        return max((memory(pid, field) for pid in pids), default=0)

    peak = before = largest("VmRSS")
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while pids and not done.is_set():
            peak = max(peak, largest("VmRSS"))
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    headers = {"Authorization": authorization}
    started = time.perf_counter()
    no_total = aiohttp.ClientTimeout(total=None)  # bounded by asyncio.timeout instead
    async with asyncio.timeout(bound), aiohttp.ClientSession(timeout=no_total) as session:
        if direction == "upload":
            async with session.put(url + "/upload", data=upload_body(size), headers=headers) as r:
                answer = await r.json() if r.status == 200 else {"status": r.status}
            if answer.get("received") != size:
                raise BenchError(f"upload to {url}: the upstream got {answer}")
        else:
            received = 0
            async with session.get(url + f"/download?bytes={size}", headers=headers) as r:
                if r.status != 200:
                    raise BenchError(f"download from {url}: {r.status} {await r.text()}")
                async for data in r.content.iter_chunked(CHUNK):
                    received += len(data)
            if received != size:
                raise BenchError(f"download from {url}: {received} of {size} bytes")
    seconds = time.perf_counter() - started
    done.set()
    await sampler
    return Transfer(seconds, before, peak, largest("VmHWM"))


def start_everything(
    procs: Processes,
) -> tuple[dict[str, tuple[str, str]], dict[str, list[int]], int]:
    """Upstream, proxy, jitgate, a lone gateway: the base URL and Authorization of each
    target, the pids that forward for each, and the lone gateway's supervisor pid."""
    port = free_port()
    argv = [sys.executable, "-c", STREAMING_UPSTREAM, str(port), SECRET_AUTHORIZATION]
    upstream = procs.start("upstream", argv, clean_env())
    upstream_url = f"http://{LOOPBACK}:{port}"
    wait_until_ok(
        upstream_url + "/download?bytes=1", upstream, {"Authorization": SECRET_AUTHORIZATION}
    )
    proxy, proxy_url = start_bare_proxy(procs, upstream_url)  # /v1/ping: 0 bytes
    jg = start_jitgate(procs)
    register_api(jg, API, upstream_url)
    _, token = grant(jg, API, 60, ("PUT /upload", "GET /download"))
    serve, serve_url = start_gateway_alone(procs, jg, SERVE_WORKERS)
    workers = worker_pids(serve.pid)
    if len(workers) != SERVE_WORKERS:
        raise BenchError(f"serve gateway: {len(workers)} worker processes, not {SERVE_WORKERS}")
    targets = {
        "direct": (upstream_url, f"Bearer {UPSTREAM_SECRET}"),
        "proxy": (proxy_url, f"Bearer {token}"),
        "gateway": (f"{jg.gateway}/{API}", f"Bearer {token}"),
        "serve": (f"{serve_url}/{API}", f"Bearer {token}"),
    }
    pids = {"direct": [], "proxy": [proxy.pid], "gateway": [jg.proc.pid], "serve": workers}
    return targets, pids, serve.pid


def report(
    results: dict[tuple[str, str], Transfer],
    size: int,
    elapsed: float,
    load: str,
    supervisor: int,
) -> str:
    lines = [
        "",
        "gateway streaming benchmark (bench/streaming.py)",
        f"  date       {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; took {elapsed:.0f}s;"
        f" load average before {load}; after {load_average()}",
        f"  machine    {machine()}",
        f"  method     one {size / MIB:,.0f} MiB upload (PUT) and download (GET) per target,"
        " aiohttp client in the bench; memory of the forwarding process",
        "",
        f"  {'':<20}{'MiB/s':>9}{'vs direct':>11}{'RSS before':>12}{'RSS peak':>10}"
        f"{'VmHWM':>9}  (MB)",
    ]
    for direction in ("upload", "download"):
        base = results[direction, "direct"].mib_per_s(size)
        for name in TARGETS:
            t = results[direction, name]
            memory_columns = (
                f"{t.rss_before / 1e6:>12,.1f}{t.rss_peak / 1e6:>10,.1f}{t.hwm / 1e6:>9,.1f}"
                if name != "direct"
                else ""
            )
            lines.append(
                f"  {direction + ', ' + name:<20}{t.mib_per_s(size):>9,.0f}"
                f"{ratio(t.mib_per_s(size), base):>11}{memory_columns}"
            )
    lines += ["", f"  serve gateway's supervisor (carries no traffic): {supervisor / 1e6:,.1f} MB"]
    lines.append("  issue 4 target, gateway process peak RSS (VmHWM) < 100 MB:")
    for name in GATEWAYS:
        peak = max(results[d, name].hwm for d in ("upload", "download"))
        label = {"gateway": "jitgate up (one process)", "serve": "serve gateway, a worker"}[name]
        lines.append(f"    {label:<26} {peak / 1e6:,.1f} MB: {verdict(peak / 1e6 < MAX_RSS_MB)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="1 GiB upload and download through the gateway: its peak RSS and its"
        " throughput against the same transfers direct and through a bare proxy.",
    )
    add = parser.add_argument
    add("--size", type=int, default=1024, help="MiB per transfer (default 1024)")
    add("--timeout", type=float, default=300, help="seconds per transfer at most (default 300)")
    args = parser.parse_args(argv)
    if not 1 <= args.size <= 4096 or not 10 <= args.timeout <= 1800:
        parser.error("--size must lie in 1..4096 MiB and --timeout in 10..1800 s")
    size = args.size * MIB
    started = time.monotonic()

    def body(work: Path, procs: Processes, load: str) -> None:
        print(
            "starting a streaming upstream, a bare proxy, 'jitgate up --demo' and"
            " 'jitgate serve gateway' on loopback"
        )
        targets, pids, supervisor = start_everything(procs)
        results: dict[tuple[str, str], Transfer] = {}
        for direction in ("upload", "download"):
            for name in TARGETS:
                url, authorization = targets[name]
                results[direction, name] = t = uvloop.run(
                    transfer(url, authorization, direction, size, pids[name], args.timeout)
                )
                print(f"  {direction:<8} {name:<8} {t.mib_per_s(size):>7,.0f} MiB/s")
        elapsed = time.monotonic() - started
        print(report(results, size, elapsed, load, memory(supervisor, "VmRSS")))

    return run_bench(body)


if __name__ == "__main__":
    sys.exit(main())
