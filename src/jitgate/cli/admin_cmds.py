"""Administration: APIs, principals, and the policy tools."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from jitgate.cli import policy_cmds
from jitgate.cli.client import Client, fail
from jitgate.cli.output import Output, OutputOption, emit_json, listing
from jitgate.domain.durations import format_duration, parse_duration
from jitgate.domain.models import Api, Injection, InjectionKind, Principal, PrincipalKind
from jitgate.domain.scopes import parse_scope
from jitgate.errors import JitgateError

SECRET_ENV = "JITGATE_API_SECRET"  # noqa: S105 - the name of a variable, not its value

api_app = typer.Typer(help="Register and manage upstream APIs.", no_args_is_help=True)
principal_app = typer.Typer(help="Manage principals and their tokens.", no_args_is_help=True)
keys_app = typer.Typer(help="Token-signing keys.", no_args_is_help=True)
policy_app = typer.Typer(help="Check, explain and reload policies.", no_args_is_help=True)


def _client(ctx: typer.Context) -> Client:
    client: Client = ctx.obj
    return client


@api_app.command("add")
def api_add(
    ctx: typer.Context,
    name: str,
    base_url: Annotated[str, typer.Option(help="upstream base URL (http/https)")],
    secret_env: Annotated[
        str, typer.Option(help="name of the environment variable holding the secret")
    ] = SECRET_ENV,
    inject: Annotated[str, typer.Option(help="header | query | basic")] = "header",
    header: Annotated[str, typer.Option(help="header name (inject=header)")] = "Authorization",
    template: Annotated[str, typer.Option(help="header value template")] = "Bearer {secret}",
    param: Annotated[str, typer.Option(help="query parameter (inject=query)")] = "api_key",
    username: Annotated[str, typer.Option(help="user name (inject=basic)")] = "",
    environment: Annotated[str, typer.Option(help="environment label")] = "prod",
    owner: Annotated[list[str] | None, typer.Option(help="owner group (repeatable)")] = None,
    description: str = "",
) -> None:
    """Register an upstream API. The secret is read from an environment variable."""
    secret = os.environ.get(secret_env)
    if not secret:
        fail(f"set the upstream secret in ${secret_env} (it is never taken on the command line)")
    body = {
        "name": name,
        "base_url": base_url,
        "secret": secret,
        "injection": {
            "kind": inject,
            "name": param if inject == "query" else header,
            "template": template,
            "username": username,
        },
        "environment": environment,
        "owners": owner or [],
        "description": description,
    }
    created = _client(ctx).call("POST", "/v1/apis", json_body=body)
    typer.echo(f"API {created['name']} registered: {created['base_url']}")


@api_app.command("list")
def api_list(ctx: typer.Context, output: Output = OutputOption) -> None:
    """List registered APIs (never their secrets)."""
    items = _client(ctx).call("GET", "/v1/apis")["items"]
    rows = [
        (a["name"], a["base_url"], a["environment"], ", ".join(a["owners"]), a["injection"]["kind"])
        for a in items
    ]
    listing(output, items, "APIs", ["name", "base_url", "environment", "owners", "injection"], rows)


@api_app.command("rotate-secret")
def api_rotate(
    ctx: typer.Context,
    name: str,
    secret_env: Annotated[
        str, typer.Option(help="environment variable with the new secret")
    ] = SECRET_ENV,
) -> None:
    """Replace an API's upstream secret (read from an environment variable)."""
    secret = os.environ.get(secret_env)
    if not secret:
        fail(f"set the new secret in ${secret_env}")
    _client(ctx).call("POST", f"/v1/apis/{name}/secret", json_body={"secret": secret})
    typer.echo(f"secret of {name} rotated")


@principal_app.command("add")
def principal_add(
    ctx: typer.Context,
    principal_id: str,
    kind: Annotated[str, typer.Option(help="user | service")] = "user",
    name: Annotated[str, typer.Option(help="display name")] = "",
    group: Annotated[list[str] | None, typer.Option(help="group (repeatable)")] = None,
    admin: Annotated[bool, typer.Option(help="make an administrator")] = False,
) -> None:
    """Create a principal."""
    body = {
        "id": principal_id,
        "kind": kind,
        "display_name": name,
        "groups": group or [],
        "is_admin": admin,
    }
    created = _client(ctx).call("POST", "/v1/principals", json_body=body)
    typer.echo(f"principal {created['id']} created (groups: {', '.join(created['groups'])})")


@principal_app.command("list")
def principal_list(ctx: typer.Context, output: Output = OutputOption) -> None:
    """List principals."""
    items = _client(ctx).call("GET", "/v1/principals")["items"]
    rows = [
        (
            p["id"],
            p["kind"],
            p["display_name"],
            ", ".join(p["groups"]),
            "yes" if p["is_admin"] else "",
        )
        for p in items
    ]
    listing(output, items, "Principals", ["id", "kind", "name", "groups", "admin"], rows)


@principal_app.command("token")
def principal_token(
    ctx: typer.Context,
    principal_id: str,
    label: str = "",
) -> None:
    """Issue a new token for a principal (printed once; stored only as a hash)."""
    issued = _client(ctx).call(
        "POST", f"/v1/principals/{principal_id}/tokens", json_body={"label": label}
    )
    typer.echo(issued["token"])


@keys_app.command("rotate")
def keys_rotate(ctx: typer.Context) -> None:
    """Start signing with a new key; the old one stays valid until its tokens expire."""
    result = _client(ctx).call("POST", "/v1/keys/rotate")
    typer.echo(f"signing with {result['signing_kid']}; {len(result['keys'])} key(s) published")


@principal_app.command("tokens")
def principal_tokens(ctx: typer.Context, principal_id: str, output: Output = OutputOption) -> None:
    """List a principal's tokens (ids and dates; the tokens themselves are never stored)."""
    items = _client(ctx).call("GET", f"/v1/principals/{principal_id}/tokens")["items"]
    rows = [(t["id"], t["label"], t["created_at"], t["expires_at"], t["revoked_at"]) for t in items]
    listing(output, items, "Tokens", ["id", "label", "created", "expires", "revoked"], rows)


@principal_app.command("revoke-token")
def principal_revoke_token(ctx: typer.Context, principal_id: str, token_id: str) -> None:
    """Revoke one principal token at once (e.g. a leaked one)."""
    _client(ctx).call("POST", f"/v1/principals/{principal_id}/tokens/{token_id}/revoke")
    typer.echo(f"token {token_id} of {principal_id} revoked")


@principal_app.command("disable")
def principal_disable(ctx: typer.Context, principal_id: str) -> None:
    """Disable a principal: its tokens stop working and its grants are revoked."""
    result = _client(ctx).call("POST", f"/v1/principals/{principal_id}/disable")
    typer.echo(
        f"principal {principal_id} disabled; {len(result['revoked_grants'])} grant(s) revoked"
    )


@principal_app.command("enable")
def principal_enable(ctx: typer.Context, principal_id: str) -> None:
    """Re-enable a disabled principal."""
    _client(ctx).call("POST", f"/v1/principals/{principal_id}/enable")
    typer.echo(f"principal {principal_id} enabled")


@policy_app.command("check")
def policy_check(file: Path) -> None:
    """Validate a policy file: schema, scopes, durations (errors name file and line)."""
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
        client = _client(ctx)
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
    result = _client(ctx).call("POST", "/v1/policy/reload")
    if output is Output.JSON:
        emit_json(result)
    elif result["changed"]:
        typer.echo(
            f"policy reloaded: digest {result['digest']} (was {result['previous_digest']}), "
            f"{len(result['rules'])} rule(s)"
        )
    else:
        typer.echo(f"policy unchanged: digest {result['digest']}")


def notifications_list(
    ctx: typer.Context,
    dead: Annotated[bool, typer.Option("--dead", help="only dead letters")] = False,
    output: Output = OutputOption,
) -> None:
    """List notifications, newest first (administrators); retry a dead one with the API."""
    params = {"status": "dead" if dead else None}
    items = _client(ctx).call("GET", "/v1/notifications", params=params)["items"]
    rows = [
        (
            n["id"],
            n["status"],
            f"{n['channel']}:{n['target']}",
            n["event_type"],
            n["priority"],
            n["attempts"],
            n["last_error"],
        )
        for n in items
    ]
    columns = ["id", "status", "to", "event", "priority", "attempts", "last error"]
    listing(output, items, "Notifications", columns, rows)


def register(app: typer.Typer) -> None:
    app.command("notifications")(notifications_list)
    app.add_typer(api_app, name="api")
    app.add_typer(principal_app, name="principal")
    policy_cmds.register(policy_app)
    app.add_typer(policy_app, name="policy")
    app.add_typer(keys_app, name="keys")
