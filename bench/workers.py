"""Gateway workers: throughput through one gateway worker versus two (``--workers``).

Method. One upstream process serves ``jitgate.demo.upstream``; two ``jitgate up --demo``
instances run side by side (``stack.py``), one with ``gateway.workers: 1`` (the gateway
in the main process, the default of ``up``) and one with ``gateway.workers: 2`` (two
gateway worker processes sharing the port through ``SO_REUSEPORT``, the control plane in
the main process). Each has the upstream registered as the API ``bench`` and alice
holding a grant for ``GET /**`` on it. ``wrk -t1`` sends the same small GET to each
gateway at ``--connections`` connections (default 32); only the instance under load
runs, the other is paused (SIGSTOP, its workers too) and resumed before its own runs.
Rounds reverse their order, after a warm-up; medians. The issue's target: two workers
give at least 1.5x the throughput of one, on a 2-core machine where the load generator
and the upstream share the same cores.

Load generation: ``loadgen.py``; bounds and clean-up: ``harness.py``. Run it with
``.venv/bin/python bench/workers.py`` (options: ``--help``).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import httpx

from harness import (
    BenchError,
    Plan,
    Processes,
    Results,
    Target,
    add_plan_arguments,
    checked_target,
    load_average,
    machine,
    median,
    plan_from,
    ratio,
    run_bench,
    run_plan,
    verdict,
)
from loadgen import choose_loadgen
from stack import PATH, grant, register_api, start_jitgate, start_upstream, worker_pids

API = "bench"
INSTANCES = {"1 worker": 1, "2 workers": 2}
MIN_RATIO = 1.5  # 2 workers / 1 worker, throughput
RESUME_SECONDS = 1.0  # a resumed gateway's views are stale until they resync (250 ms)


class OneAtATime:
    """Pauses every instance, workers included, but the one a run targets."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.pids = pids

    def __call__(self, target: Target) -> None:
        for name, pids in self.pids.items():
            for pid in pids:
                os.kill(pid, signal.SIGCONT if name == target.name else signal.SIGSTOP)
        time.sleep(RESUME_SECONDS)
        answer = httpx.get(target.url, headers={"Authorization": target.authorization})
        if answer.status_code != 200:
            raise BenchError(f"{target.name}: {answer.status_code} after resuming")


def start_everything(
    procs: Processes, minutes: int
) -> tuple[dict[str, Target], dict[str, int], dict[str, list[int]]]:
    """The targets, the pids to account CPU to, and every pid of each instance."""
    upstream, upstream_url = start_upstream(procs)
    targets: dict[str, Target] = {}
    cpu_pids = {"upstream": upstream.pid}
    instance_pids: dict[str, list[int]] = {}
    for name, workers in INSTANCES.items():
        slug = f"jitgate-{workers}"
        jg = start_jitgate(procs, slug, {"JITGATE_GATEWAY__WORKERS": str(workers)})
        register_api(jg, API, upstream_url)
        _, token = grant(jg, API, minutes)
        url = f"{jg.gateway}/{API}{PATH}"
        targets[name] = checked_target(name, url, f"Bearer {token}", PATH)
        children = worker_pids(jg.proc.pid)
        if len(children) != (workers if workers > 1 else 0):
            raise BenchError(f"{slug}: {len(children)} worker processes, expected {workers}")
        instance_pids[name] = [jg.proc.pid, *children]
        serving = children or [jg.proc.pid]
        cpu_pids.update({f"{slug} gw{i}": pid for i, pid in enumerate(serving)})
    return targets, cpu_pids, instance_pids


def report(plan: Plan, results: Results, version: str, elapsed: float, load: str) -> str:
    def rps(name: str) -> float:
        return results.median("throughput", name, lambda r: r.rps)

    def p50(name: str) -> float:
        return results.median("throughput", name, lambda r: r.p50_us)

    def gateway_cpu(name: str) -> float:
        """CPU µs per request of the gateway's processes (its worker(s)), summed."""
        slug = f"jitgate-{INSTANCES[name]} gw"
        runs = results.runs.get(("throughput", name), [])
        return median(runs, lambda r: sum(v for k, v in r.cpu_us.items() if k.startswith(slug)))

    one, two = rps("1 worker"), rps("2 workers")
    met = not math.isnan(one) and two >= MIN_RATIO * one
    c = plan.connections
    upstream = results.cpu("2 workers", "upstream")
    return "\n".join(
        [
            "",
            "jitgate gateway workers benchmark (bench/workers.py)",
            f"  date       {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; took {elapsed:.0f}s;"
            f" load before {load}; after {load_average()}",
            f"  machine    {machine()}",
            f"  method     {version}, 1 thread; {plan.rounds} rounds, order reversed each"
            f" round, medians; {plan.seconds:.0f}s at c={c}; GET {PATH} through the gateway",
            "",
            f"  {'':<12}{'req/s':>10}{'p50 µs':>10}{'gateway CPU µs/req':>20}{'cores used':>12}",
            *(
                f"  {n:<12}{rps(n):>10,.0f}{p50(n):>10,.0f}{gateway_cpu(n):>20,.0f}"
                f"{rps(n) * gateway_cpu(n) / 1e6:>12.2f}"
                for n in INSTANCES
            ),
            f"  the upstream's CPU per request: {upstream:,.0f} µs (it and wrk share the cores)",
            "",
            f"  2 workers / 1 worker: {ratio(two, one)}x  (target >= {MIN_RATIO}x: {verdict(met)})",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Throughput through the jitgate gateway with one worker process and with"
        " two, measured in the same run; prints the ratio.",
    )
    add_plan_arguments(parser, latency=False)
    args = parser.parse_args(argv)
    plan = plan_from(parser, args)
    estimate = plan.estimate(len(INSTANCES)) + 2 * plan.rounds * RESUME_SECONDS
    minutes = min(60, 15 + math.ceil(estimate / 60))  # the bench policy allows 1h
    started = time.monotonic()

    def body(work: Path, procs: Processes, load: str) -> None:
        gen = choose_loadgen(args.loadgen, work)
        print(
            "starting an upstream and two 'jitgate up --demo' (1 and 2 gateway workers) on"
            f" loopback; about {estimate:.0f}s of load follows"
        )
        targets, cpu_pids, instance_pids = start_everything(procs, minutes)
        pause = OneAtATime(instance_pids)
        try:
            results = run_plan(gen, cpu_pids, targets, plan, before_run=pause)
        finally:
            for pids in instance_pids.values():  # stopped processes must hear SIGTERM
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGCONT)
        print(report(plan, results, gen.version, time.monotonic() - started, load))

    return run_bench(body)


if __name__ == "__main__":
    sys.exit(main())
