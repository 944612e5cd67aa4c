"""The high-throughput deployment: nginx carries the traffic, jitgate's endpoint decides.

Method. One upstream (``jitgate.demo.upstream``), one ``jitgate up --demo`` with the
decision endpoints enabled for loopback (``gateway.decisions.enabled``) and the upstream
registered as the API ``payments``, alice holding a grant for ``GET /**`` on it, and one
nginx process (one worker) serving three sites side by side (``stack.py``):

* authz:      the shipped ``docs/integrations/nginx.conf``, placeholders filled and
  nothing else changed: ``auth_request`` to jitgate's ``/authz/nginx`` on every call,
  then ``proxy_pass`` with the credential jitgate handed back, over pooled keep-alive
  upstream connections;
* nginx:      plain ``proxy_pass`` without keep-alive (no upstream block, so HTTP/1.0
  and a new upstream connection per call), the secret set by nginx: the weak baseline;
* nginx-ka:   ``proxy_pass`` with pooled keep-alive upstream connections, the best
  proxy hop here;
* gateway:    the built-in gateway, for comparison with an all-Python path.

The same small GET goes to each with the grant token, in rounds that reverse their
order, after a warm-up; medians. The issue's target: authz throughput at least 0.35 times
nginx ``proxy_pass`` in the same run, judged against both proxy_pass sites (the one
without keep-alive costs a new upstream connection per call, which flatters the ratio).
Then the revocation check: one call through nginx must pass, alice revokes the grant
through the control-plane API, and the very next call through nginx must be refused
with ``grant-revoked`` (nginx caches no decision).

Load generation: ``loadgen.py``; bounds and clean-up: ``harness.py``. Run it with
``make bench`` (options: ``.venv/bin/python bench/deployments.py --help``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import httpx

from harness import (
    LOOPBACK,
    BenchError,
    LoadGen,
    Plan,
    Processes,
    Results,
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
    NGINX_PLAIN_SITE,
    PATH,
    SECRET_AUTHORIZATION,
    Jitgate,
    call,
    example,
    grant,
    register_api,
    start_jitgate,
    start_nginx,
    start_upstream,
)

API = "payments"  # the example's API with a header credential
TARGETS = ("nginx", "nginx-ka", "authz", "gateway")
MIN_RATIO = 0.35  # authz / nginx proxy_pass


def start_everything(
    procs: Processes, grant_minutes: int
) -> tuple[dict[str, Target], dict[str, int], Jitgate, str]:
    """Every process; the targets, the pids by process, jitgate and the grant's id."""
    upstream, upstream_url = start_upstream(procs)
    jg = start_jitgate(procs, settings={"JITGATE_GATEWAY__DECISIONS__ENABLED": "true"})
    register_api(jg, API, upstream_url)
    grant_id, token = grant(jg, API, grant_minutes)
    ports = {name: free_port() for name in ("nginx", "nginx-ka", "authz")}
    upstream_address = upstream_url.removeprefix("http://")
    sites = {
        "jitgate.conf": example(
            "nginx.conf",
            {
                "LISTEN": f"{LOOPBACK}:{ports['authz']}",
                "GATEWAY": jg.gateway.removeprefix("http://"),
                "PAYMENTS_SERVER": upstream_address,
                "PAYMENTS_BASE_PATH": "",
                "MAPS_SERVER": upstream_address,  # no API "maps" here: every call is refused
                "MAPS_BASE_PATH": "",
            },
        ),
        "plain.conf": NGINX_PLAIN_SITE.format(
            listen=f"{LOOPBACK}:{ports['nginx']}",
            upstream=upstream_address,
            authorization=SECRET_AUTHORIZATION,
        ),
        "keepalive.conf": NGINX_KEEPALIVE_SITE.format(
            listen=f"{LOOPBACK}:{ports['nginx-ka']}",
            upstream=upstream_address,
            authorization=SECRET_AUTHORIZATION,
        ),
    }
    nginx = start_nginx(procs, sites, ports.values())
    auth = f"Bearer {token}"
    urls = {
        "nginx": f"http://{LOOPBACK}:{ports['nginx']}{PATH}",
        "nginx-ka": f"http://{LOOPBACK}:{ports['nginx-ka']}{PATH}",
        "authz": f"http://{LOOPBACK}:{ports['authz']}/{API}{PATH}",
        "gateway": f"{jg.gateway}/{API}{PATH}",
    }
    targets = {name: checked_target(name, url, auth, PATH) for name, url in urls.items()}
    pids = {"upstream": upstream.pid, "nginx": nginx.pid, "jitgate": jg.proc.pid}
    return targets, pids, jg, grant_id


def revocation_check(jg: Jitgate, grant_id: str, target: Target) -> str:
    """Pass, revoke, and the very next call through nginx refused: what was seen."""
    headers = {"Authorization": target.authorization}
    with httpx.Client(timeout=5) as client:
        before = client.get(target.url, headers=headers)
        if before.status_code != 200:
            raise BenchError(f"before the revocation: {before.status_code} {before.text[:300]}")
        call(jg, "alice", "POST", f"/v1/grants/{grant_id}/revoke", {"reason": "bench"})
        after = client.get(target.url, headers=headers)
    refused = after.status_code == 403 and "grant-revoked" in after.text
    return (
        f"200 before; the very next call after the revoke call returned: {after.status_code}"
        f" {after.text[:120]!r}: {'EFFECTIVE' if refused else 'NOT EFFECTIVE'}"
    )


def report(
    gen: LoadGen, plan: Plan, results: Results, revocation: str, elapsed: float, load: str
) -> str:
    c = plan.connections

    def rps(name: str) -> float:
        return results.median("throughput", name, lambda r: r.rps)

    def p50(name: str) -> float:
        return results.median("latency", name, lambda r: r.p50_us)

    lines = [
        "",
        "nginx + jitgate decision endpoint benchmark (bench/deployments.py)",
        f"  date       {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; took {elapsed:.0f}s;"
        f" load average before {load}; after {load_average()}",
        f"  machine    {machine()}",
        f"  method     {gen.version}, 1 thread; {plan.rounds} rounds, order reversed each"
        f" round, medians; {plan.seconds:.0f}s at c={c}, {plan.latency_seconds:.0f}s at c=1;"
        " nginx: 1 worker",
        "",
        f"  {'':<12}{'req/s c=' + str(c):>12}{'p50 c=1 µs':>12}{'vs nginx':>10}{'vs nginx-ka':>13}"
        f"{'nginx CPU µs':>14}{'jitgate CPU µs':>16}",
    ]
    for name in TARGETS:
        lines.append(
            f"  {name:<12}{rps(name):>12,.0f}{p50(name):>12,.0f}"
            f"{ratio(rps(name), rps('nginx')):>10}{ratio(rps(name), rps('nginx-ka')):>13}"
            f"{results.cpu(name, 'nginx'):>14,.0f}"
            f"{results.cpu(name, 'jitgate'):>16,.0f}"
        )
    best, plain = rps("authz") / rps("nginx-ka"), rps("authz") / rps("nginx")
    lines += [
        "",
        f"  authz / gateway throughput: {ratio(rps('authz'), rps('gateway'))}",
        f"  issue 4 target, authz >= {MIN_RATIO:.2f}x nginx proxy_pass:"
        f" against keep-alive proxy_pass (the best hop) {best:.2f}: {verdict(best >= MIN_RATIO)};"
        f" against proxy_pass without keep-alive {plain:.2f}:"
        f" {verdict(plain >= MIN_RATIO)}",
        f"  revocation through nginx: {revocation}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="nginx auth_request to jitgate's decision endpoint vs nginx proxy_pass,"
        " measured in the same run, and revocation effective on the next call.",
    )
    add_plan_arguments(parser)
    args = parser.parse_args(argv)
    plan = plan_from(parser, args)
    estimate = plan.estimate(len(TARGETS))
    started = time.monotonic()

    def body(work: Path, procs: Processes, load: str) -> None:
        gen = choose_loadgen(args.loadgen, work)
        print(
            "starting an upstream, 'jitgate up --demo' and nginx on loopback;"
            f" about {estimate:.0f}s of load follows"
        )
        minutes = min(60, 15 + math.ceil(estimate / 60))  # the policy allows 1h
        targets, pids, jg, grant_id = start_everything(procs, minutes)
        results = run_plan(gen, pids, targets, plan)
        revocation = revocation_check(jg, grant_id, targets["authz"])
        print(report(gen, plan, results, revocation, time.monotonic() - started, load))

    return run_bench(body)


if __name__ == "__main__":
    sys.exit(main())
