"""``jitgate policy``: check, explain, test (a decision table, offline, for CI), replay
(a candidate policy against the request history, on the server) and reload.

Exit codes of ``policy test``: 0 every case passed, 1 a case failed (or the policy does
not load: the policy under test is broken), 2 the table itself is bad.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from jitgate.cli.client import Client, fail
from jitgate.cli.output import Output, OutputOption, emit_json, table
from jitgate.domain.durations import format_duration, parse_duration
from jitgate.domain.models import Api, Injection, InjectionKind, Principal, PrincipalKind
from jitgate.domain.scopes import parse_scope
from jitgate.errors import JitgateError

TABLE_ERROR = 2  # the exit code of a bad table, as for a usage error

policy_app = typer.Typer(
    help="Check, explain, test, replay and reload policies.", no_args_is_help=True
)


@policy_app.command("test")
def policy_test(
    file: Annotated[Path, typer.Argument(help="the policy file under test")],
    cases: Annotated[Path, typer.Argument(metavar="TABLE", help="the decision table (YAML)")],
    output: Output = OutputOption,
) -> None:
    """Decide every case of TABLE under the policy FILE, offline, and compare with the
    expected decisions; exits 1 if any case fails, 2 if the table is bad."""
    # Imported here, as for the other policy commands: ~0.4 s that other commands skip.
    from jitgate.clock import SystemClock  # noqa: PLC0415
    from jitgate.policy import load_policy  # noqa: PLC0415
    from jitgate.policy.testing import load_table, run_table, summary  # noqa: PLC0415

    try:
        decision_table = load_table(cases)
    except JitgateError as exc:
        fail(exc.detail, code=TABLE_ERROR)
    try:
        policy = load_policy(file)
    except JitgateError as exc:
        fail(exc.detail)
    results = run_table(policy, decision_table, SystemClock().now())
    failed = sum(1 for r in results if not r.passed)
    if output is Output.JSON:
        emit_json(
            {
                "policy": {"source": str(file), "digest": policy.digest},
                "table": {"source": str(cases), "digest": decision_table.digest},
                "passed": len(results) - failed,
                "failed": failed,
                "cases": [
                    {
                        "name": r.case.name,
                        "line": r.case.line,
                        "passed": r.passed,
                        "failures": list(r.failures),
                        "decision": r.evaluation.decision.as_dict(),
                    }
                    for r in results
                ],
            }
        )
    else:
        for r in results:
            decision = r.evaluation.decision
            if r.passed:
                typer.echo(f"pass  {r.case.name}: {summary(decision)}")
                continue
            typer.echo(
                f"FAIL  {r.case.name} ({cases}:{r.case.line}): {'; '.join(r.failures)}; "
                f"got {summary(decision)}; reasons: {' | '.join(decision.reasons)}"
            )
        typer.echo(
            f"{len(results) - failed} passed, {failed} failed "
            f"(policy {file}, digest {policy.digest[:12]})"
        )
    if failed:
        raise typer.Exit(1)


@policy_app.command("replay")
def policy_replay(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="the candidate policy file")],
    since: Annotated[str, typer.Option(help="how far back: 30d, 12h, … or seconds")] = "30d",
    limit: Annotated[int, typer.Option(min=0, help="changed requests to list (table)")] = 50,
    output: Output = OutputOption,
) -> None:
    """Re-decide the requests of the last --since under FILE, on the server
    (administrators), and show what would change; nothing is changed."""
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"{file}: cannot read the policy file: {exc.strerror}")
    except UnicodeDecodeError:
        fail(f"{file}: the policy file is not UTF-8 text")
    client: Client = ctx.obj
    body = {"policy": text, "since": since, "source": str(file)}
    result: dict[str, Any] = client.call("POST", "/v1/policy/replay", json_body=body)
    if output is Output.JSON:
        emit_json(result)
        return
    candidate = result["candidate"]
    typer.echo(
        f"{result['examined']} request(s) filed since {result['since']} re-decided under "
        f"{candidate['source']} (digest {candidate['digest'][:12]}, "
        f"{candidate['rules']} rule(s))"
    )
    if result["truncated"]:
        typer.echo(
            f"only the latest {result['limit']} were examined: the oldest examined was filed "
            f"at {result['oldest_examined']}; use a shorter --since to see the rest"
        )
    skipped = ", ".join(f"{n} {why}" for why, n in result["skipped"].items() if n) or "none"
    rows = [(change, count) for change, count in result["counts"].items()]
    rows.append(("unchanged", result["unchanged"]))
    table("What would change", ["change", "requests"], rows)
    typer.echo(f"not re-decided: {skipped}")
    changes = result["changes"]
    if not changes or not limit:
        return
    typer.echo("changed requests (id, filed, requester, api, scopes: old -> new, why):")
    for c in changes[:limit]:
        old, new = c["old"], c["new"]
        why = f"; {new['reasons'][0]}" if new["reasons"] else ""
        typer.echo(
            f"  {c['change']}  {c['request']}  {c['created_at']}  {c['requester']}  {c['api']}  "
            f"{', '.join(c['scopes'])}: {old['outcome']} ({old['rule'] or 'no rule'}) -> "
            f"{new['outcome']} ({new['rule'] or 'no rule'}){why}"
        )
    if len(changes) > limit:
        typer.echo(f"… and {len(changes) - limit} more (--limit, or --output json for all)")


@policy_app.command("check")
def policy_check(file: Path) -> None:
    """Validate a policy file: schema, scopes, durations, CEL conditions (errors name file
    and line)."""
    from jitgate.policy import load_policy  # noqa: PLC0415 - ~0.4 s, only for these commands

    try:
        policy = load_policy(file)
    except JitgateError as exc:
        fail(exc.detail)
    typer.echo(f"{file}: ok, {len(policy.rules)} rule(s), digest {policy.digest[:12]}")


@policy_app.command("explain")
def policy_explain(
    ctx: typer.Context,
    file: Path,
    principal: Annotated[str, typer.Option(help="requester id")],
    api: Annotated[str, typer.Option(help="API name")],
    scope: Annotated[list[str], typer.Option("--scope", "-s", help="requested scope")],
    duration: Annotated[str, typer.Option("--for", help="requested duration")],
    group: Annotated[
        list[str] | None, typer.Option(help="requester group; with --environment, works offline")
    ] = None,
    environment: Annotated[str | None, typer.Option(help="the API's environment label")] = None,
    reason: Annotated[str, typer.Option(help="the request's reason")] = "explain",
    ticket: Annotated[str | None, typer.Option(help="the request's ticket reference")] = None,
    at: Annotated[
        datetime | None, typer.Option(help="decide as of this time (ISO 8601; default now)")
    ] = None,
    denials: Annotated[int, typer.Option(help="the requester's recent denials")] = 0,
    output: Output = OutputOption,
) -> None:
    """Show which rule decides a request under FILE, why the others did not, the risk
    breakdown and the approvals needed."""
    from jitgate.policy import Subject, evaluate, load_policy  # noqa: PLC0415 - as above

    try:
        policy = load_policy(file)
        scopes = tuple(parse_scope(s) for s in scope)
        length = parse_duration(duration)
    except JitgateError as exc:
        fail(exc.detail)
    if group is None or environment is None:  # ask the server for what was not given
        client: Client = ctx.obj
        if not client.token:
            fail(
                "give --group (repeatable) and --environment to explain offline, "
                "or log in so that they are read from the server"
            )
        if group is None:
            group = client.call("GET", f"/v1/principals/{principal}")["groups"]
        if environment is None:
            environment = client.call("GET", f"/v1/apis/{api}")["environment"]
    subject = Subject(
        principal=Principal(principal, PrincipalKind.USER, principal, frozenset(group or [])),
        api=Api(api, "http://unused", Injection(InjectionKind.HEADER), environment or "prod"),
        scopes=scopes,
        duration=length,
        now=datetime.now(UTC) if at is None else at.replace(tzinfo=at.tzinfo or UTC),
        reason=reason,
        ticket=ticket,
        recent_denials=denials,
    )
    evaluation = evaluate(policy, subject)
    decision = evaluation.decision
    if output is Output.JSON:
        emit_json(
            {
                "decision": decision.as_dict(),
                "trace": [
                    {"rule": t.rule, "line": t.line, "matched": t.matched, "reason": t.reason}
                    for t in evaluation.trace
                ],
            }
        )
        return
    typer.echo(
        f"decision: {decision.outcome.value} (rule {decision.rule or '-'}), "
        f"{format_duration(length)} requested"
    )
    for t in evaluation.trace:
        mark = "=>" if t.matched else "  "
        typer.echo(f" {mark} {t.rule} (line {t.line}): {t.reason}")
    for later in policy.rules[len(evaluation.trace) :] if evaluation.trace else ():
        typer.echo(f"    {later.name} (line {later.line}): not consulted")
    for why in decision.reasons:
        typer.echo(f"  reason: {why}")
    factors = ", ".join(f"{n} +{p}" for n, p in decision.risk.factors) or "none"
    typer.echo(f"  risk: {decision.risk.score} ({factors})")
    for step in decision.steps:
        who = sorted(step.groups) + [f"principal {p}" for p in sorted(step.principals)]
        condition = f", where {step.when}" if step.when else ""
        typer.echo(f"  approval step {step.name}: {step.count} from {', '.join(who)}{condition}")
    if decision.steps and decision.deny_count > 1:
        typer.echo(f"  denied once {decision.deny_count} eligible people deny")


@policy_app.command("reload")
def policy_reload(ctx: typer.Context, output: Output = OutputOption) -> None:
    """Make the server load its policy_file again (administrators); a bad file is refused
    with its file:line errors, and the policy in force stays."""
    client: Client = ctx.obj
    result = client.call("POST", "/v1/policy/reload")
    if output is Output.JSON:
        emit_json(result)
    elif result["changed"]:
        typer.echo(
            f"policy reloaded: digest {result['digest']} (was {result['previous_digest']}), "
            f"{len(result['rules'])} rule(s)"
        )
    else:
        typer.echo(f"policy unchanged: digest {result['digest']}")
