"""Gateway overhead: a small GET through the jitgate gateway versus three baselines.

Method. One upstream process serves ``jitgate.demo.upstream`` (aiohttp on uvloop) with a
secret the bench chooses; a real ``jitgate up --demo`` runs in its own process with that
upstream registered as the API ``bench`` and alice holding a grant for ``GET /**`` on it
(``stack.py``). One load generator, in its own process, sends the same small GET four
ways, all answered by that one upstream process:

* direct:  ``GET /v1/ping`` to the upstream, with its secret;
* nginx:   the same GET through nginx ``proxy_pass`` with pooled keep-alive upstream
  connections, injecting the secret: the practical limit of a proxy hop here;
* proxy:   the same GET through a bare aiohttp reverse proxy (its own process) that
  forwards and streams exactly as the gateway does but checks and records nothing, so
  that "the cost of any Python proxy hop" and "the cost of jitgate" can be told apart;
* gateway: ``GET /bench/v1/ping`` to the jitgate gateway with the grant token, which it
  verifies, checks (revocation, time, scope, quota), audits and forwards, injecting the
  secret.

Throughput is measured at ``--connections`` connections (default 32, like
``wrk -t1 -c32``) and latency at one connection, where nothing queues and the
difference is the time a hop adds to one call. Each round runs every target once, in
an order that reverses every round, after a short warm-up of each; medians are
reported as ratios against baselines measured in the same run. The issue's targets are
checked against the bare proxy: gateway throughput at least 0.90 of it, and at most
50 µs more p50 latency at one connection. The CPU time each process spends per request
(``/proc/<pid>/stat``) is reported too: it suffers less than req/s from scheduling on
a small machine where load generator, proxies and upstream share the cores.

Load generation: ``loadgen.py``; bounds and clean-up: ``harness.py``. Run it with
``make bench`` (options: ``.venv/bin/python bench/gateway.py --help``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from harness import (
    LOOPBACK,
    LoadGen,
    Plan,
    Processes,
    Results,
    RunResult,
    Target,
    add_plan_arguments,
    checked_target,
    free_port,
    load_average,
    machine,
    plan_from,
    ratio,
    run_bench,
    run_plan,
    verdict,
)
from loadgen import choose_loadgen
from stack import (
    NGINX_KEEPALIVE_SITE,
    PATH,
    SECRET_AUTHORIZATION,
    grant,
    register_api,
    start_bare_proxy,
    start_jitgate,
    start_nginx,
    start_upstream,
)

BENCH_API = "bench"
TARGETS = ("direct", "nginx", "proxy", "gateway")
MIN_THROUGHPUT_RATIO = 0.90  # gateway / bare proxy at c=N
MAX_ADDED_P50_US = 50.0  # gateway over bare proxy at c=1


def start_everything(
    procs: Processes, grant_minutes: int
) -> tuple[dict[str, Target], dict[str, int]]:
    """Every process and one checked target each; the targets and the pids by process."""
    upstream, upstream_url = start_upstream(procs)
    nginx_port = free_port()
    site = NGINX_KEEPALIVE_SITE.format(
        upstream=upstream_url.removeprefix("http://"),
        listen=f"{LOOPBACK}:{nginx_port}",
        authorization=SECRET_AUTHORIZATION,
    )
    nginx = start_nginx(procs, {"keepalive.conf": site}, [nginx_port])
    proxy, proxy_url = start_bare_proxy(procs, upstream_url)
    jg = start_jitgate(procs)
    register_api(jg, BENCH_API, upstream_url)
    _, token = grant(jg, BENCH_API, grant_minutes)
    gateway_auth = f"Bearer {token}"

    # nginx and the proxy get the grant token too (and replace it), so that all but the
    # direct run send the very same bytes.
    urls = {
        "direct": (upstream_url + PATH, SECRET_AUTHORIZATION),
        "nginx": (f"http://{LOOPBACK}:{nginx_port}{PATH}", gateway_auth),
        "proxy": (proxy_url + PATH, gateway_auth),
        "gateway": (f"{jg.gateway}/{BENCH_API}{PATH}", gateway_auth),
    }
    targets = {name: checked_target(name, url, auth, PATH) for name, (url, auth) in urls.items()}
    pids = {
        "upstream": upstream.pid,
        "nginx": nginx.pid,
        "proxy": proxy.pid,
        "jitgate": jg.proc.pid,
    }
    return targets, pids


def report(
    gen: LoadGen,
    targets: dict[str, Target],
    plan: Plan,
    results: Results,
    elapsed: float,
    load: str,
) -> str:
    c = plan.connections
    rows: list[tuple[str, str, Callable[[RunResult], float]]] = [
        (f"throughput, c={c} (req/s)", "throughput", lambda r: r.rps),
        ("latency p50, c=1 (µs)", "latency", lambda r: r.p50_us),
        ("latency p99, c=1 (µs)", "latency", lambda r: r.p99_us),
        (f"latency p50, c={c} (µs)", "throughput", lambda r: r.p50_us),
        (f"latency p99, c={c} (µs)", "throughput", lambda r: r.p99_us),
    ]
    lines = [
        "",
        "jitgate gateway benchmark (bench/gateway.py)",
        f"  date       {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; took {elapsed:.0f}s;"
        f" load average before {load}; after {load_average()}",
        f"  machine    {machine()}",
        f"  method     {gen.version}, 1 thread; {plan.rounds} rounds, order reversed each"
        f" round, medians; {plan.seconds:.0f}s at c={c}, {plan.latency_seconds:.0f}s at c=1",
        f"  request    GET {PATH}; answer {targets['direct'].response_bytes} B direct,"
        f" {targets['gateway'].response_bytes} B through the gateway (jitgate.demo.upstream)",
        "",
        f"  {'':<26}"
        + "".join(f"{name:>9}" for name in TARGETS)
        + f"{'gw/direct':>11}{'gw/nginx':>10}{'gw/proxy':>10}",
    ]
    for label, phase, value in rows:
        d, n, p, g = (results.median(phase, name, value) for name in TARGETS)
        lines.append(
            f"  {label:<26}{d:>9,.0f}{n:>9,.0f}{p:>9,.0f}{g:>9,.0f}"
            f"{ratio(g, d):>11}{ratio(g, n):>10}{ratio(g, p):>10}"
        )

    def p50(target: str) -> float:
        return results.median("latency", target, lambda r: r.p50_us)

    def p99(target: str) -> float:
        return results.median("latency", target, lambda r: r.p99_us)

    added = ", ".join(
        f"{name} p50 {p50(name) - p50('direct'):+,.0f} p99 {p99(name) - p99('direct'):+,.0f}"
        for name in TARGETS[1:]
    )
    cpu = results.cpu
    up, proxy, jitgate = cpu("direct", "upstream"), cpu("proxy", "proxy"), cpu("gateway", "jitgate")
    throughput = ratio(
        results.median("throughput", "gateway", lambda r: r.rps),
        results.median("throughput", "proxy", lambda r: r.rps),
    )
    added_p50 = p50("gateway") - p50("proxy")
    lines += [
        "",
        f"  added latency at c=1 (µs), against direct: {added}",
        f"  CPU per request at c={c} (µs): upstream {up:,.0f} (direct); nginx"
        f" {cpu('nginx', 'nginx'):,.0f}; bare proxy {proxy:,.0f}; jitgate {jitgate:,.0f}"
        f" ({ratio(jitgate, proxy)}x bare proxy)",
        "",
        "  issue 4 targets, against the bare proxy:",
        f"    throughput gateway / proxy at c={c}: {throughput}"
        f" (target >= {MIN_THROUGHPUT_RATIO:.2f}):"
        f" {verdict(throughput != 'n/a' and float(throughput) >= MIN_THROUGHPUT_RATIO)}",
        f"    added p50 at c=1 over the proxy: {added_p50:+,.0f} µs"
        f" (target <= {MAX_ADDED_P50_US:.0f} µs): {verdict(added_p50 <= MAX_ADDED_P50_US)}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Throughput and latency of a small GET through the jitgate gateway, as"
        " ratios against the same GET straight to the same upstream, through nginx"
        " proxy_pass and through a bare aiohttp proxy, measured in the same run.",
    )
    add_plan_arguments(parser)
    args = parser.parse_args(argv)
    plan = plan_from(parser, args)
    estimate = plan.estimate(len(TARGETS))
    grant_minutes = min(60, 15 + math.ceil(estimate / 60))  # the policy allows 1h
    started = time.monotonic()

    def body(work: Path, procs: Processes, load: str) -> None:
        gen = choose_loadgen(args.loadgen, work)
        print(
            "starting an upstream, nginx, a bare proxy and 'jitgate up --demo' on loopback;"
            f" about {estimate:.0f}s of load follows"
        )
        targets, pids = start_everything(procs, grant_minutes)
        results = run_plan(gen, pids, targets, plan)
        print(report(gen, targets, plan, results, time.monotonic() - started, load))

    return run_bench(body)


if __name__ == "__main__":
    sys.exit(main())
