"""Using and ending grants: grants, token, extend, review, release, revoke."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from jitgate.cli.access_cmds import (
    CommentOption,
    ForOption,
    ReasonOption,
    WaitTimeout,
    client_of,
    fresh_token,
    require_approved,
    summarise,
    wait_for_decision,
)
from jitgate.cli.client import fail
from jitgate.cli.output import Output, OutputOption, emit_json, listing


def _notes(grant: dict[str, Any]) -> str:
    notes = []
    if grant["needs_review"]:
        notes.append("needs review")
    elif grant["reviewed_by"]:
        notes.append(f"reviewed by {grant['reviewed_by']}")
    if grant["extends"]:
        notes.append(f"extends {grant['extends']}")
    return "\n".join(notes)


def register(app: typer.Typer) -> None:
    @app.command()
    def grants(
        ctx: typer.Context,
        active: Annotated[bool, typer.Option(help="only grants in force now")] = False,
        mine: Annotated[bool, typer.Option(help="only my grants")] = False,
        principal: Annotated[str | None, typer.Option()] = None,
        api: Annotated[str | None, typer.Option()] = None,
        needs_review: Annotated[
            bool, typer.Option(help="only flagged grants (break glass) not yet reviewed")
        ] = False,
        output: Output = OutputOption,
    ) -> None:
        """List grants."""
        client = client_of(ctx)
        if mine:
            principal = client.call("GET", "/v1/me")["id"]
        params = {
            "active": "true" if active else None,
            "principal": principal,
            "api": api,
            "needs_review": "true" if needs_review else None,
        }
        items = client.call("GET", "/v1/grants", params=params)["items"]
        listing(
            output,
            items,
            "Grants",
            ["id", "status", "principal", "api", "scopes", "expires", "notes"],
            [
                (
                    g["id"],
                    g["status"],
                    g["principal"],
                    g["api"],
                    "\n".join(g["scopes"]),
                    g["expires_at"],
                    _notes(g),
                )
                for g in items
            ],
        )

    @app.command()
    def token(ctx: typer.Context, grant_id: str, output: Output = OutputOption) -> None:
        """Print a fresh token for one of your grants."""
        issued = fresh_token(client_of(ctx), grant_id)
        if output is Output.JSON:
            emit_json(issued)
        else:
            typer.echo(issued["token"])

    @app.command()
    def extend(
        ctx: typer.Context,
        grant_id: str,
        duration: ForOption,
        reason: ReasonOption,
        scope: Annotated[
            list[str] | None,
            typer.Option("--scope", "-s", help="keep only these scopes (repeatable)"),
        ] = None,
        wait: Annotated[bool, typer.Option(help="wait for the decision")] = False,
        timeout: WaitTimeout = 3600,
        output: Output = OutputOption,
    ) -> None:
        """Ask to continue one of your grants for --for more once it ends (same scopes,
        or fewer). The policy decides as for a request."""
        client = client_of(ctx)
        body = {"duration": duration, "reason": reason, "scopes": scope or None}
        created = client.call("POST", f"/v1/grants/{grant_id}/extend", json_body=body)
        if wait:
            created = wait_for_decision(client, created, timeout)
            require_approved(created)
        if output is Output.JSON:
            emit_json(created)
            if created["status"] == "denied":
                raise typer.Exit(1)
            return
        summarise(created)

    @app.command()
    def review(ctx: typer.Context, grant_id: str, comment: CommentOption = "") -> None:
        """Mark a flagged (break-glass) grant of someone else as reviewed."""
        reviewed = client_of(ctx).call(
            "POST", f"/v1/grants/{grant_id}/review", json_body={"comment": comment}
        )
        typer.echo(f"grant {reviewed['id']}: reviewed by {reviewed['reviewed_by']}")

    @app.command()
    def release(ctx: typer.Context, grant_id: str) -> None:
        """End one of your own grants now (and any extension of it)."""
        ended = client_of(ctx).call(
            "POST", f"/v1/grants/{grant_id}/revoke", json_body={"reason": ""}
        )
        typer.echo(f"grant {ended['id']}: {ended['status']}")

    @app.command()
    def revoke(
        ctx: typer.Context,
        grant_id: Annotated[str | None, typer.Argument()] = None,
        reason: Annotated[str, typer.Option("--reason", "-r")] = "",
        principal: Annotated[str | None, typer.Option(help="every active grant of")] = None,
        api: Annotated[str | None, typer.Option(help="every active grant on")] = None,
    ) -> None:
        """Revoke a grant (and any extension of it), or every active grant of a principal
        and/or API (kill switch)."""
        client = client_of(ctx)
        if grant_id is not None:
            if principal or api:
                fail("give a grant id, or --principal/--api, not both", code=2)
            ended = client.call(
                "POST", f"/v1/grants/{grant_id}/revoke", json_body={"reason": reason}
            )
            typer.echo(f"grant {ended['id']}: {ended['status']}")
            return
        if not (principal or api):
            fail("give a grant id, or --principal and/or --api", code=2)
        result = client.call(
            "POST",
            "/v1/revocations",
            json_body={"principal": principal, "api": api, "reason": reason},
        )
        typer.echo(f"revoked {result['revoked']} grant(s)")
        for g in result["items"]:
            typer.echo(f"  {g['id']} ({g['principal']} on {g['api']})")
