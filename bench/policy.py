"""Policy decision latency: ``evaluate()`` on a realistic 50-rule policy with CEL conditions.

Method. The bench writes a 50-rule policy (ten teams, ten APIs plus a shared ``core``
API, varied scope ceilings and approval modes; 49 rules carry a ``when:`` CEL condition
on the request, the principal, the API, the risk or the time) and the same 50 rules
with every ``when:`` removed (the baseline). It then times single calls of
``jitgate.policy.evaluate`` (``time.perf_counter_ns`` around each call) for:

* worst: a request that every rule covers (olga, a member of every team, reads
  ``GET /v1/status`` on ``core``, which lies inside every ceiling) and whose ``when``
  is false for the first 49 rules, so all 49 conditions run and the last rule decides;
* typical: a cycle of eight requests by single-team engineers (reads and writes, in and
  out of hours, with and without ticket), decided by early, middle and late rules, or
  denied because no rule covers them.

Each scenario runs on both policies, in rounds that alternate the order, after a
warm-up; p50, p99 and max are reported, and every figure as a ratio against the
baseline (same rules, no ``when``) measured in the same run. The target is a p99 under
1 ms for the worst case. Then the 49 conditions of the worst case are timed alone in
``common-expression-language`` (the library jitgate uses), with one context and with a
context per condition (what the engine avoids: it builds one context per decision, as
building one costs far more than running a condition), and in ``cel-python`` (module
``celpy``) on the same values if it is importable; otherwise that comparison is
skipped, saying so.

The bench is pure CPU in this process (no network, no files), bounded by
``--decisions`` and ``--seconds`` per scenario and policy; it stops by itself in about
a minute on 2 vCPUs.
Run it with ``make bench`` or ``.venv/bin/python bench/policy.py [--decisions N]``.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from jitgate.domain.models import Api, Injection, InjectionKind, Principal, PrincipalKind
from jitgate.domain.scopes import parse_scope
from jitgate.policy import Policy, Subject, evaluate, parse_policy
from jitgate.policy.conditions import activation, compile_condition
from jitgate.policy.engine import variables
from jitgate.policy.risk import assess

TEAMS = 10
RULES = 50
TARGET_P99_US = 1_000.0
ROUNDS = 4
WARMUP = 500
WARMUP_SECONDS = 1.0

# Ceilings: each one admits GET /v1/status (so the worst-case request is covered by all).
CEILINGS = (
    '["GET /v1/**"]',
    '["* /**"]',
    '["GET /**", "POST /v1/charges/*"]',
    '["GET,HEAD /v1/*", "PUT /v1/customers/{id}"]',
    '["GET /v1/**", "DELETE /v1/cache/**"]',
)
# Conditions, each false for the worst-case request (4h, off-hours on a Saturday, no
# ticket, risk 75, on a prod API); ``{n}`` varies the constants from rule to rule.
CONDITIONS = (
    'request.duration <= duration("{n}m")',
    "risk.score < {n}",
    "time.hour >= 8 && time.hour < 19 && risk.score < {n}",
    'time.weekday in ["mon", "tue", "wed", "thu", "fri"] && request.duration < duration("{n}m")',
    'request.ticket != null && request.ticket.startsWith("INC-") && risk.score < {n}',
    'request.reason.matches("^(INC|CHG)-[0-9]+") || size(request.scopes) > {n}',
    "has(principal.attributes.on_call) && principal.attributes.on_call && risk.score < {n}",
    'api.environment != "prod" && request.methods.all(m, m in ["GET", "HEAD"]) && {n} > 0',
    'has(principal.attributes.team) && principal.attributes.team == "team-{n}"',
    'size(risk.factors) <= 1 && request.duration < duration("{n}h")',
)
MAX_DURATIONS = ("15m", "30m", "1h", "2h", "8h")
APPROVALS = (
    "auto",
    "{{count: 1, from: {{groups: [team-{t}-leads]}}}}",
    "auto",
    "{{steps: [{{name: peer, count: 1, from: {{groups: [team-{t}]}}}}, "
    "{{name: owner, count: 1, from: {{groups: [api-owners]}}}}]}}",
    "break_glass",
)


def policy_text(*, conditions: bool) -> str:
    lines = [
        "version: 1",
        "defaults: {max_duration: 1h, pending_ttl: 24h, time_zone: Europe/Paris}",
        "rules:",
    ]
    for i in range(RULES):
        team = i % TEAMS
        apis = "[core]" if i % 7 == 6 else f"[api-{team}, api-{(team + 3) % TEAMS}, core]"
        lines += [
            f"  - name: r{i:02d}-team-{team}",
            f"    requesters: {{groups: [team-{team}{', sre' if i % 4 == 3 else ''}]}}",
            f"    apis: {apis}",
            f"    scopes: {CEILINGS[i % len(CEILINGS)]}",
            f"    max_duration: {MAX_DURATIONS[i % 5] if i < RULES - 1 else '8h'}",
            f"    approval: {APPROVALS[i % len(APPROVALS)].format(t=team)}",
        ]
        if conditions and i < RULES - 1:
            source = CONDITIONS[(i + i // TEAMS) % len(CONDITIONS)].format(n=10 + i % 40)
            lines.append(f"    when: '{source}'")
    return "\n".join(lines) + "\n"


def _principal(pid: str, groups: Sequence[str], **attributes: Any) -> Principal:
    return Principal(pid, PrincipalKind.USER, pid, frozenset(groups), attributes)


def _api(name: str, environment: str = "prod") -> Api:
    return Api(name, "https://unused.invalid", Injection(InjectionKind.HEADER), environment)


SATURDAY_NIGHT = datetime(2026, 1, 10, 2, 0, tzinfo=UTC)  # 03:00 in Paris
MONDAY_MORNING = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)


def _subject(
    principal: Principal,
    api: Api,
    scope: str,
    duration: timedelta,
    now: datetime,
    *,
    reason: str = "looking around",
    ticket: str | None = None,
    recent_denials: int = 0,
) -> Subject:
    return Subject(
        principal=principal,
        api=api,
        scopes=(parse_scope(scope),),
        duration=duration,
        now=now,
        reason=reason,
        ticket=ticket,
        recent_denials=recent_denials,
    )


OLGA = _principal("olga", [f"team-{t}" for t in range(TEAMS)], team="platform")
WORST = _subject(
    OLGA, _api("core"), "GET /v1/status", timedelta(hours=4), SATURDAY_NIGHT, recent_denials=3
)


def typical_subjects() -> list[Subject]:
    ann = _principal("ann", ["team-2"], team="team-12")
    raj = _principal("raj", ["team-5"], team="payments", on_call=True)
    kim = _principal("kim", ["team-8"], team="team-18")
    out = _principal("out", ["contractors"])
    return [
        _subject(
            ann,
            _api("api-2", "staging"),
            "GET /v1/charges/ch_1",
            timedelta(minutes=10),
            MONDAY_MORNING,
        ),
        _subject(
            ann,
            _api("api-5"),
            "POST /v1/charges/ch_1",
            timedelta(minutes=30),
            MONDAY_MORNING,
            ticket="INC-42",
            reason="INC-42 refund",
        ),
        _subject(
            raj, _api("api-5"), "GET /v1/customers/c_9", timedelta(minutes=15), MONDAY_MORNING
        ),
        _subject(
            raj,
            _api("core"),
            "DELETE /v1/cache/users",
            timedelta(minutes=20),
            SATURDAY_NIGHT,
            ticket="INC-7",
            reason="INC-7 stale cache",
        ),
        _subject(
            kim,
            _api("api-8", "staging"),
            "GET /v1/reports/daily",
            timedelta(hours=2),
            MONDAY_MORNING,
        ),
        _subject(
            kim, _api("api-1"), "PUT /v1/customers/c_3", timedelta(minutes=45), SATURDAY_NIGHT
        ),
        _subject(out, _api("api-3"), "GET /v1/charges/ch_2", timedelta(minutes=10), MONDAY_MORNING),
        _subject(kim, _api("core"), "GET /v1/status", timedelta(minutes=5), MONDAY_MORNING),
    ]


def time_calls(call: Callable[[], object], count: int, seconds: float = 1e9) -> list[float]:
    """Microseconds per call, one sample per call: ``count`` calls, or fewer if
    ``seconds`` run out first."""
    samples = []
    clock = time.perf_counter_ns
    deadline = clock() + int(seconds * 1e9)
    for _ in range(count):
        start = clock()
        call()
        end = clock()
        samples.append((end - start) / 1000)
        if end > deadline:
            break
    return samples


def percentile(samples: Sequence[float], share: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def measure(
    cases: dict[str, Callable[[], object]], decisions: int, seconds: float
) -> dict[str, list[float]]:
    """Up to ``decisions`` samples of every case (at most ``seconds`` each), in rounds
    that alternate the order, after a warm-up."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for name in names:
        time_calls(cases[name], WARMUP, WARMUP_SECONDS)
    per_round = max(1, decisions // ROUNDS)
    for round_no in range(ROUNDS):
        for name in names if round_no % 2 == 0 else reversed(names):
            gc.collect()
            samples[name] += time_calls(cases[name], per_round, seconds / ROUNDS)
    return samples


def decider(policy: Policy, subjects: Sequence[Subject]) -> Callable[[], object]:
    index = 0

    def call() -> object:
        nonlocal index
        subject = subjects[index % len(subjects)]
        index += 1
        return evaluate(policy, subject)

    return call


def library_comparison(sources: Sequence[str], decisions: int, seconds: float) -> None:
    """The worst case's conditions alone: the cost of a CEL context, of an evaluation,
    and the same conditions in cel-python when it is installed."""
    print("\nCEL, the 49 conditions of the worst case alone (same sources, same values):")
    risk = assess(
        WORST.principal,
        WORST.api,
        WORST.scopes,
        WORST.duration,
        local_time=WORST.now,
        recent_denials=WORST.recent_denials,
    )
    values = variables(WORST, risk, UTC)
    ours = [compile_condition(s) for s in sources]

    def run_ours() -> object:
        context = activation(**values)
        return [c.holds(context) for c in ours]

    def run_context_each() -> object:
        return [c.holds(activation(**values)) for c in ours]

    cases: dict[str, Callable[[], object]] = {
        "cel, one context": run_ours,
        "cel, a context per condition": run_context_each,
    }
    try:
        import celpy  # noqa: PLC0415 - optional: only for this comparison
    except ImportError:
        celpy = None
        print(
            "  cel-python (module celpy) is not installed: not compared "
            "(it is not in the local package index of this machine)"
        )
    if celpy is not None:
        try:
            env = celpy.Environment()
            programs = [env.program(env.compile(s)) for s in sources]
            to_cel = getattr(celpy, "json_to_cel", None) or celpy.adapter.json_to_cel
            theirs = {name: to_cel(value) for name, value in values.items()}

            def run_celpy() -> object:
                return [bool(p.evaluate(theirs)) for p in programs]

            if run_celpy() == run_ours():
                cases["cel-python"] = run_celpy
            else:
                print("  cel-python and cel disagree on these conditions: not compared")
        except Exception as exc:  # an API difference between celpy versions: say, go on
            print(f"  cel-python failed on these conditions ({type(exc).__name__}: {exc})")
    samples = measure(cases, max(ROUNDS * 25, decisions // 20), seconds)
    base = statistics.median(samples["cel, one context"])
    for name, found in samples.items():
        p50 = statistics.median(found)
        print(
            f"  {name:30} p50 {p50:9.1f} µs for {len(sources)} "
            f"({p50 / len(sources):6.1f} µs each), p99 {percentile(found, 0.99):9.1f} µs, "
            f"{p50 / base:6.1f}x"
        )
    context = time_calls(lambda: activation(**values), 200)
    context_used = time_calls(lambda: ours[0].holds(activation(**values)), 200)
    print(
        f"  building a context: {statistics.median(context):.1f} µs; building and using it "
        f"once: {statistics.median(context_used):.1f} µs"
    )


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPU(s), load average {load:.2f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--decisions",
        type=int,
        default=20_000,
        help="decisions timed per scenario and policy (default 20000)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=10.0,
        help="at most this long per scenario and policy, whatever --decisions (default 10)",
    )
    args = parser.parse_args(argv)
    if args.decisions < ROUNDS:
        parser.error(f"--decisions must be at least {ROUNDS}")
    started = time.monotonic()
    print(f"policy bench: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine()}")

    load_start = time.perf_counter()
    with_when = parse_policy(policy_text(conditions=True), "bench-50-rules.yaml")
    load_ms = (time.perf_counter() - load_start) * 1000
    baseline = parse_policy(policy_text(conditions=False), "bench-50-rules-no-when.yaml")
    conditions = [r.when.source for r in with_when.rules if r.when is not None]
    print(
        f"policy: {len(with_when.rules)} rules, {len(conditions)} with a when condition; "
        f"loaded and compiled in {load_ms:.0f} ms"
    )

    worst = evaluate(with_when, WORST)
    assert worst.rule is not None, worst.trace
    assert worst.rule.name == with_when.rules[-1].name, worst.trace
    assert sum(1 for t in worst.trace if t.reason.startswith("when is false")) == RULES - 1
    typical = typical_subjects()
    print(
        "typical mix decided by: "
        + ", ".join(
            f"{evaluate(with_when, s).decision.outcome.value}/"
            f"{evaluate(with_when, s).decision.rule or 'no rule'}"
            for s in typical
        )
    )

    samples = measure(
        {
            "worst, when": decider(with_when, [WORST]),
            "worst, baseline": decider(baseline, [WORST]),
            "typical, when": decider(with_when, typical),
            "typical, baseline": decider(baseline, typical),
        },
        args.decisions,
        args.seconds,
    )
    print("\nevaluate() latency (µs):")
    print(
        f"  {'scenario':36} {'decisions':>9} {'p50':>8} {'p99':>8} {'max':>9}"
        "   p50 / baseline   p99 / baseline"
    )
    for scenario in ("worst", "typical"):
        base = samples[f"{scenario}, baseline"]
        for kind in ("baseline", "when"):
            found = samples[f"{scenario}, {kind}"]
            p50, p99 = statistics.median(found), percentile(found, 0.99)
            print(
                f"  {scenario + ', ' + kind:36} {len(found):9}"
                f" {p50:8.1f} {p99:8.1f} {max(found):9.1f}"
                f"   {p50 / statistics.median(base):14.2f}"
                f"   {p99 / percentile(base, 0.99):14.2f}"
            )
    worst_p99 = percentile(samples["worst, when"], 0.99)
    extra = statistics.median(samples["worst, when"]) - statistics.median(
        samples["worst, baseline"]
    )
    print(
        f"\nworst case: {extra / (RULES - 1):.1f} µs per when condition (p50, over the "
        f"baseline); p99 {worst_p99:.0f} µs: "
        + ("under" if worst_p99 < TARGET_P99_US else "OVER")
        + f" the {TARGET_P99_US:.0f} µs target"
    )
    library_comparison(conditions, args.decisions, args.seconds)
    print(f"\ndone in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
