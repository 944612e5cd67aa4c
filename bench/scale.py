"""Flatness: the gateway's per-call cost with 1 vs 100,000 grants, revocations and tokens.

Method. One upstream and three ``jitgate up --demo`` processes (``stack.py``), each with
the upstream registered as the API ``bench`` and alice holding one grant for ``GET /**``
on it; then the bench writes straight into each one's SQLite database, in bulk
(``executemany`` on the storage layer's tables, one transaction each):

* jitgate:         1 revoked grant besides alice's active one (the baseline);
* jitgate-grants:  100,000 more active grants, and 1 revoked;
* jitgate-revoked: 100,000 revoked grants, still in date, that the gateway's revocation
  view must hold (it reloads them from the database every 250 ms).

Alice's grant gets 10,000 more tokens (distinct ``jti``), signed here with the instance's
signing key as the control plane would sign them. The same small GET then goes four
ways, each with ``wrk`` cycling through a file of tokens (the same Lua path for all):

* base:         the baseline instance, its one token;
* grants:       the instance with 100,000 active grants, its one token;
* revocations:  the instance with 100,000 revocations, its one token;
* tokens:       the baseline instance, 10,000 distinct valid tokens in rotation.

Only the instance under load runs: the others are paused (SIGSTOP) so that their
periodic work does not take the shared cores, and resumed, then called until they
answer 200 (their revocation view fresh again), before their runs. Rounds reverse their
order, after a warm-up; medians. Per-call cost is the serving process's CPU time per
request; throughput at ``--connections`` and p50 at one connection are shown too. The
issue's target: 100,000 grants or revocations within 5% of the baseline; 10,000 tokens
without a cliff. Before the rounds, the tokens target runs once cold (every token's
signature checked once; successes are cached, failures never are).

Load generation: ``loadgen.py``; bounds and clean-up: ``harness.py``. Run it with
``make bench`` (options: ``.venv/bin/python bench/scale.py --help``).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
from sqlalchemy import insert

from harness import (
    MAX_FAILED_SHARE,
    BenchError,
    LoadGen,
    Plan,
    Processes,
    Results,
    RunResult,
    Target,
    add_plan_arguments,
    checked_target,
    cpu_seconds,
    load_average,
    machine,
    measure,
    plan_from,
    ratio,
    run_bench,
    run_plan,
    verdict,
)
from jitgate.domain.models import GrantStatus
from jitgate.secrets import SecretBox
from jitgate.secrets.box import load_master_key
from jitgate.storage.store import Store
from jitgate.storage.tables import grants
from jitgate.tokens.grant_token import issue
from jitgate.tokens.keys import KeyRing
from loadgen import choose_loadgen
from stack import PATH, Jitgate, grant, register_api, start_jitgate, start_upstream

API = "bench"
MANY = 100_000  # grants, revocations
TOKENS = 10_000
FLAT = 0.05  # the largest change in per-call cost that counts as flat
# target -> the jitgate instance serving it
SERVED_BY = {
    "base": "jitgate",
    "grants": "jitgate-grants",
    "revocations": "jitgate-revoked",
    "tokens": "jitgate",
}


# ------------------------------------------------------------------------------ seeding


def seed_grants(jg: Jitgate, grant_id: str, count: int, status: GrantStatus) -> float:
    """``count`` grants like alice's, in one transaction; the seconds it took."""
    started = time.monotonic()
    now = datetime.now(UTC)
    store = Store.open(f"sqlite:///{jg.state / 'jitgate.db'}", migrate_schema=False)
    try:
        with store.transaction() as tx:
            model = tx.access.get_grant(grant_id)
            if model is None:
                raise BenchError(f"grant {grant_id} is not in {jg.state}")
            ended = status is not GrantStatus.ACTIVE
            rows: list[dict[str, Any]] = [
                {
                    "id": f"bench-{status.value[0]}-{i:024d}",  # 32 characters
                    "request_id": model.request_id,
                    "principal": model.principal,
                    "api": model.api,
                    "scopes": list(model.scopes),
                    "not_before": now - timedelta(minutes=1),
                    "expires_at": now + timedelta(hours=1),
                    "status": status.value,
                    "created_at": now - timedelta(minutes=1),
                    "ended_at": now if ended else None,
                    "ended_by": model.principal if ended else None,
                    "end_reason": "bench" if ended else None,
                    "needs_review": False,
                }
                for i in range(count)
            ]
            tx.connection.execute(insert(grants), rows)
    finally:
        store.close()
    return time.monotonic() - started


def issue_tokens(jg: Jitgate, grant_id: str, token: str, count: int) -> list[str]:
    """``count`` more valid tokens for the grant, signed with the instance's key."""
    now = datetime.now(UTC)
    box = SecretBox(load_master_key(None, jg.state / "master.key"))
    issuer = jwt.decode(token, options={"verify_signature": False})["iss"]
    store = Store.open(f"sqlite:///{jg.state / 'jitgate.db'}", migrate_schema=False)
    try:
        with store.read() as tx:
            model = tx.access.get_grant(grant_id)
            ring = KeyRing.from_stored(tx.directory.list_keys(), box, now)
    finally:
        store.close()
    if model is None or ring is None:
        raise BenchError(f"no grant {grant_id} or no signing key in {jg.state}")
    return [issue(model, ring, issuer, now)[0] for _ in range(count)]


# ------------------------------------------------------------------------------ running


class OneAtATime:
    """Pauses every instance but the one a run targets (process groups: workers too)."""

    def __init__(self, instances: dict[str, Jitgate]) -> None:
        self.instances = instances

    def __call__(self, target: Target) -> None:
        serving = SERVED_BY[target.name]
        for name, jg in self.instances.items():
            os.killpg(jg.proc.pid, signal.SIGCONT if name == serving else signal.SIGSTOP)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # a resumed view is stale until it resyncs
            answer = httpx.get(target.url, headers={"Authorization": target.authorization})
            if answer.status_code == 200:
                return
            time.sleep(0.05)
        raise BenchError(f"{target.name}: no 200 within 30s of resuming {serving}")


def idle_cpu(instances: dict[str, Jitgate], seconds: float = 3.0) -> dict[str, float]:
    """The share of one core each instance uses while nothing calls it (all running)."""
    for jg in instances.values():
        os.killpg(jg.proc.pid, signal.SIGCONT)
    time.sleep(1.0)  # a view resumed from a pause resyncs first
    before = {name: cpu_seconds(jg.proc.pid) for name, jg in instances.items()}
    time.sleep(seconds)
    return {
        name: (cpu_seconds(jg.proc.pid) - before[name]) / seconds for name, jg in instances.items()
    }


def start_everything(
    procs: Processes, work: Path, minutes: int
) -> tuple[dict[str, Target], dict[str, int], dict[str, Jitgate], list[str]]:
    """Processes, seeds and targets; also the seeding log lines."""
    upstream, upstream_url = start_upstream(procs)
    instances: dict[str, Jitgate] = {}
    tokens: dict[str, tuple[str, str]] = {}
    for name in ("jitgate", "jitgate-grants", "jitgate-revoked"):
        instances[name] = jg = start_jitgate(procs, name)
        register_api(jg, API, upstream_url)
        tokens[name] = grant(jg, API, minutes)
    log = []
    seeds = (
        ("jitgate", 1, GrantStatus.REVOKED),
        ("jitgate-grants", 1, GrantStatus.REVOKED),
        ("jitgate-grants", MANY, GrantStatus.ACTIVE),
        ("jitgate-revoked", MANY, GrantStatus.REVOKED),
    )
    for name, count, status in seeds:
        seconds = seed_grants(instances[name], tokens[name][0], count, status)
        log.append(f"{name}: {count:,} {status.value} grants written in {seconds:.1f}s")
    grant_id, token = tokens["jitgate"]
    started = time.monotonic()
    many = [token, *issue_tokens(instances["jitgate"], grant_id, token, TOKENS - 1)]
    log.append(f"jitgate: {TOKENS:,} tokens signed in {time.monotonic() - started:.1f}s")
    files = {}
    for name, lines in [(n, [t]) for n, (_, t) in tokens.items()] + [("many", many)]:
        files[name] = work / f"tokens-{name}.txt"
        files[name].write_text("\n".join(lines) + "\n")
    sources = {
        "base": ("jitgate", files["jitgate"]),
        "grants": ("jitgate-grants", files["jitgate-grants"]),
        "revocations": ("jitgate-revoked", files["jitgate-revoked"]),
        "tokens": ("jitgate", files["many"]),
    }
    targets = {}
    for target, (name, file) in sources.items():
        url = f"{instances[name].gateway}/{API}{PATH}"
        auth = f"Bearer {tokens[name][1]}"
        targets[target] = checked_target(target, url, auth, PATH, file)
    pids = {"upstream": upstream.pid} | {n: jg.proc.pid for n, jg in instances.items()}
    return targets, pids, instances, log


def report(
    gen: LoadGen,
    plan: Plan,
    results: Results,
    cold: RunResult,
    idle: dict[str, float],
    log: list[str],
    elapsed: float,
    load: str,
) -> str:
    c = plan.connections

    def rps(name: str) -> float:
        return results.median("throughput", name, lambda r: r.rps)

    def p50(name: str) -> float:
        return results.median("latency", name, lambda r: r.p50_us)

    def cpu(name: str) -> float:
        return results.cpu(name, SERVED_BY[name])

    def failed(name: str) -> float:
        return results.median("throughput", name, lambda r: r.failed / r.requests)

    lines = [
        "",
        "gateway flatness benchmark (bench/scale.py)",
        f"  date       {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; took {elapsed:.0f}s;"
        f" load average before {load}; after {load_average()}",
        f"  machine    {machine()}",
        f"  method     {gen.version}, 1 thread, tokens cycled from a file; {plan.rounds} rounds,"
        f" order reversed each round, medians; {plan.seconds:.0f}s at c={c},"
        f" {plan.latency_seconds:.0f}s at c=1; idle instances paused",
        *(f"  seeded     {line}" for line in log),
        "  idle CPU   "
        + ", ".join(f"{name} {share:.0%} of a core" for name, share in idle.items()),
        "",
        f"  {'':<13}{'req/s c=' + str(c):>12}{'CPU µs/req':>12}{'p50 c=1 µs':>12}"
        f"{'req/s ratio':>13}{'CPU ratio':>11}{'p50 ratio':>11}{'failed':>8}",
    ]
    for name in SERVED_BY:
        lines.append(
            f"  {name:<13}{rps(name):>12,.0f}{cpu(name):>12,.0f}{p50(name):>12,.0f}"
            f"{ratio(rps(name), rps('base')):>13}{ratio(cpu(name), cpu('base')):>11}"
            f"{ratio(p50(name), p50('base')):>11}{failed(name):>8.1%}"
        )
    lines += [
        f"  tokens, cold pass ({plan.seconds:.0f}s at c={c}, every token verified once):"
        f" {cold.rps:,.0f} req/s, {cold.cpu_us['jitgate']:,.0f} µs CPU/req,"
        f" {cold.failed} failed"
        f" ({ratio(cold.rps, rps('base'))} of base)",
        "",
        f"  issue 4 targets (per-call cost within {FLAT:.0%} of base; tokens: no cliff):",
    ]
    for name, count in (
        ("grants", "100,000 active grants"),
        ("revocations", "100,000 revocations"),
    ):
        cost, speed = cpu(name) / cpu("base"), rps(name) / rps("base")
        flat = cost <= 1 + FLAT and speed >= 1 - FLAT and failed(name) <= MAX_FAILED_SHARE
        lines.append(
            f"    {count}: CPU/req x{cost:.2f}, req/s x{speed:.2f}, {failed(name):.1%} of calls"
            f" failed: {verdict(flat)}"
        )
    speed = rps("tokens") / rps("base")
    lines.append(
        f"    10,000 tokens in rotation: req/s x{speed:.2f}, CPU/req"
        f" x{cpu('tokens') / cpu('base'):.2f}: {verdict(speed >= 1 - FLAT)} (no cliff)"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Gateway per-call cost with 1 vs 100,000 active grants, 1 vs 100,000"
        " revocations and 1 vs 10,000 tokens in rotation, measured in the same run.",
    )
    add_plan_arguments(parser)
    args = parser.parse_args(argv)
    plan = plan_from(parser, args)
    estimate = plan.estimate(len(SERVED_BY)) + plan.seconds
    started = time.monotonic()

    def body(work: Path, procs: Processes, load: str) -> None:
        gen = choose_loadgen(args.loadgen, work)
        print(
            "starting an upstream and three 'jitgate up --demo' on loopback, seeding their"
            f" databases; about {estimate:.0f}s of load follows"
        )
        minutes = min(60, 15 + math.ceil(estimate / 60))  # the policy allows 1h
        targets, pids, instances, log = start_everything(procs, work, minutes)
        print("\n".join(log))
        idle = idle_cpu(instances)
        pause = OneAtATime(instances)
        pause(targets["tokens"])
        cold = measure(gen, pids, targets["tokens"], plan.connections, plan.seconds, 1.0)
        print(f"  tokens cold pass: {cold.rps:,.0f} req/s")
        # Failed calls are reported, not fatal: whether the gateway keeps serving is a finding.
        results = run_plan(gen, pids, targets, plan, pause, max_failed_share=1.0)
        elapsed = time.monotonic() - started
        print(report(gen, plan, results, cold, idle, log, elapsed, load))

    return run_bench(body)


if __name__ == "__main__":
    sys.exit(main())
