"""The policy tools for operators: ``policy test`` (a decision table, offline, for CI)
and ``policy replay`` (a candidate policy against the audit history, on the server).

Exit codes of ``policy test``: 0 every case passed, 1 a case failed (or the policy does
not load: the policy under test is broken), 2 the table itself is bad.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from jitgate.cli.client import Client, fail
from jitgate.cli.output import Output, OutputOption, emit_json, table
from jitgate.errors import JitgateError

TABLE_ERROR = 2  # the exit code of a bad table, as for a usage error


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


def register(policy_app: typer.Typer) -> None:
    """Add these commands to the ``policy`` group."""
    policy_app.command("test")(policy_test)
    policy_app.command("replay")(policy_replay)
