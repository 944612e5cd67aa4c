"""Administration: APIs, principals, keys and notifications."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from jitgate.cli import policy_cmds
from jitgate.cli.client import Client, fail
from jitgate.cli.output import Output, OutputOption, listing

SECRET_ENV = "JITGATE_API_SECRET"  # noqa: S105 - the name of a variable, not its value

api_app = typer.Typer(help="Register and manage upstream APIs.", no_args_is_help=True)
principal_app = typer.Typer(help="Manage principals and their tokens.", no_args_is_help=True)
keys_app = typer.Typer(help="Token-signing keys.", no_args_is_help=True)


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
    mask: Annotated[
        list[str] | None,
        typer.Option(help="JSONPath masked in JSON responses, e.g. '$.card.number' (repeatable)"),
    ] = None,
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
        "masks": mask or [],
    }
    created = _client(ctx).call("POST", "/v1/apis", json_body=body)
    typer.echo(f"API {created['name']} registered: {created['base_url']}")
    if created["masks"]:
        typer.echo(f"masked in JSON responses: {', '.join(created['masks'])}")


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


@api_app.command("set-masks")
def api_set_masks(
    ctx: typer.Context,
    name: str,
    mask: Annotated[
        list[str] | None,
        typer.Option("--mask", help="JSONPath of a response field to mask (repeatable)"),
    ] = None,
) -> None:
    """Replace an API's response masks (none given: remove them); in force on the next call."""
    result = _client(ctx).call("PUT", f"/v1/apis/{name}/masks", json_body={"masks": mask or []})
    masks = result["masks"]
    typer.echo(f"masks of {name}: {', '.join(masks)}" if masks else f"{name} has no masks")


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
    app.add_typer(policy_cmds.policy_app, name="policy")
    app.add_typer(keys_app, name="keys")
