"""Requesting, approving, using and ending access."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Annotated, Any

import typer

from jitgate.cli.client import Client, fail
from jitgate.cli.output import Output, OutputOption, emit_json, err_console, listing

ScopeOption = Annotated[
    list[str], typer.Option("--scope", "-s", help="'METHODS /path/pattern' (repeatable)")
]
ForOption = Annotated[str, typer.Option("--for", help="duration: 90s, 15m, 1h, 1h30m")]
ReasonOption = Annotated[str, typer.Option("--reason", "-r", help="why you need it")]
TicketOption = Annotated[str | None, typer.Option(help="ticket reference")]
CommentOption = Annotated[str, typer.Option("--comment", "-m")]


def _client(ctx: typer.Context) -> Client:
    client: Client = ctx.obj
    return client


def _file(
    client: Client, api: str, scopes: list[str], duration: str, reason: str, ticket: str | None
) -> dict[str, Any]:
    body = {"api": api, "scopes": scopes, "duration": duration, "reason": reason, "ticket": ticket}
    created: dict[str, Any] = client.call("POST", "/v1/requests", json_body=body)
    return created


def _wait(client: Client, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    shown = False
    while request["status"] == "pending":
        if not shown:
            required = request["decision"]["approvals_required"]
            groups = ", ".join(request["decision"]["approver_groups"])
            err_console.print(
                f"request {request['id']} is pending: "
                f"{required} approval(s) from {groups}; waiting…"
            )
            shown = True
        if time.monotonic() >= deadline:
            fail(
                f"request {request['id']} is still pending after {timeout:.0f}s; it stays open "
                f"(see 'jitgate requests --mine', or 'jitgate cancel {request['id']}')"
            )
        time.sleep(1.0)
        request = client.call("GET", f"/v1/requests/{request['id']}")
    return request


def _require_approved(request: dict[str, Any]) -> str:
    if request["status"] != "approved":
        reasons = "; ".join(request["decision"]["reasons"]) or request["status"]
        fail(f"request {request['id']} was {request['status']}: {reasons}")
    grant_id: str = request["grant_id"]
    return grant_id


def _token(client: Client, grant_id: str) -> dict[str, Any]:
    issued: dict[str, Any] = client.call("POST", f"/v1/grants/{grant_id}/token")
    return issued


def register(app: typer.Typer) -> None:  # noqa: PLR0915 - one nested function per command
    @app.command()
    def request(
        ctx: typer.Context,
        api: str,
        scope: ScopeOption,
        duration: ForOption,
        reason: ReasonOption,
        ticket: TicketOption = None,
        wait: Annotated[bool, typer.Option(help="wait for the decision, print the token")] = False,
        timeout: Annotated[float, typer.Option(help="seconds to wait")] = 3600,
        output: Output = OutputOption,
    ) -> None:
        """File an access request. With --wait, print the grant token once approved."""
        client = _client(ctx)
        created = _file(client, api, scope, duration, reason, ticket)
        if wait:
            decided = _wait(client, created, timeout)
            grant_id = _require_approved(decided)
            issued = _token(client, grant_id)
            if output is Output.JSON:
                emit_json({"request": decided, **issued})
            else:
                err_console.print(
                    f"grant {grant_id} until {issued['expires_at']} via {issued['gateway_url']}"
                )
                typer.echo(issued["token"])
            return
        if output is Output.JSON:
            emit_json(created)
            return
        decision = created["decision"]
        typer.echo(
            f"request {created['id']}: {created['status']} (rule {decision['rule'] or '-'}, "
            f"risk {decision['risk']['score']})"
        )
        for line in decision["reasons"]:
            typer.echo(f"  - {line}")
        if created["status"] == "approved":
            typer.echo(
                f"grant {created['grant_id']}: "
                f"get a token with 'jitgate token {created['grant_id']}'"
            )
        elif created["status"] == "denied":
            raise typer.Exit(1)

    @app.command(name="exec")
    def exec_(
        ctx: typer.Context,
        api: str,
        scope: ScopeOption,
        duration: ForOption,
        reason: ReasonOption,
        command: Annotated[list[str], typer.Argument(help="the command to run, after --")],
        ticket: TicketOption = None,
        timeout: Annotated[float, typer.Option(help="seconds to wait for approval")] = 3600,
    ) -> None:
        """Run COMMAND with JITGATE_TOKEN and JITGATE_URL set; release the grant when it ends."""
        client = _client(ctx)
        decided = _wait(client, _file(client, api, scope, duration, reason, ticket), timeout)
        grant_id = _require_approved(decided)
        issued = _token(client, grant_id)
        env = {**os.environ, "JITGATE_TOKEN": issued["token"], "JITGATE_URL": issued["gateway_url"]}
        code = 1
        try:
            child = subprocess.Popen(command, env=env)  # noqa: S603 - the user's own command
        except OSError as exc:
            client.call("POST", f"/v1/grants/{grant_id}/revoke", json_body={"reason": "released"})
            fail(f"cannot run {command[0]!r}: {exc.strerror}", code=127)
        try:
            while True:
                try:
                    code = child.wait()
                    break
                except KeyboardInterrupt:
                    child.send_signal(signal.SIGINT)
        finally:
            try:
                client.call(
                    "POST", f"/v1/grants/{grant_id}/revoke", json_body={"reason": "released"}
                )
                err_console.print(f"grant {grant_id} released")
            except typer.Exit:  # the error is printed; the command's exit code still wins
                err_console.print(f"warning: grant {grant_id} was NOT released; it ends at expiry")
        raise typer.Exit(code if code >= 0 else 128 - code)

    @app.command()
    def requests(
        ctx: typer.Context,
        pending: Annotated[bool, typer.Option(help="only pending requests")] = False,
        mine: Annotated[bool, typer.Option(help="only my requests")] = False,
        api: Annotated[str | None, typer.Option()] = None,
        output: Output = OutputOption,
    ) -> None:
        """List access requests."""
        client = _client(ctx)
        me = client.call("GET", "/v1/me")["id"] if mine else None
        params = {"status": "pending" if pending else None, "requester": me, "api": api}
        items = client.call("GET", "/v1/requests", params=params)["items"]
        listing(
            output,
            items,
            "Requests",
            ["id", "status", "requester", "api", "scopes", "for", "risk", "reason"],
            [
                (
                    r["id"],
                    r["status"],
                    r["requester"],
                    r["api"],
                    "\n".join(r["scopes"]),
                    r["duration"],
                    r["decision"]["risk"]["score"],
                    r["reason"],
                )
                for r in items
            ],
        )

    def _decide(ctx: typer.Context, verb: str, request_id: str, comment: str) -> None:
        result = _client(ctx).call(
            "POST", f"/v1/requests/{request_id}/{verb}", json_body={"comment": comment}
        )
        line = f"request {result['id']}: {result['status']}"
        if result.get("grant_id"):
            line += f" (grant {result['grant_id']})"
        elif result["status"] == "pending":
            approvals = sum(1 for a in result["approvals"] if a["verdict"] == "approve")
            line += f" ({approvals}/{result['decision']['approvals_required']} approvals)"
        typer.echo(line)

    @app.command()
    def approve(ctx: typer.Context, request_id: str, comment: CommentOption = "") -> None:
        """Approve a pending request."""
        _decide(ctx, "approve", request_id, comment)

    @app.command()
    def deny(ctx: typer.Context, request_id: str, comment: CommentOption = "") -> None:
        """Deny a pending request."""
        _decide(ctx, "deny", request_id, comment)

    @app.command()
    def cancel(ctx: typer.Context, request_id: str, comment: CommentOption = "") -> None:
        """Cancel your own pending request."""
        _decide(ctx, "cancel", request_id, comment)

    @app.command()
    def grants(
        ctx: typer.Context,
        active: Annotated[bool, typer.Option(help="only grants in force now")] = False,
        mine: Annotated[bool, typer.Option(help="only my grants")] = False,
        principal: Annotated[str | None, typer.Option()] = None,
        api: Annotated[str | None, typer.Option()] = None,
        output: Output = OutputOption,
    ) -> None:
        """List grants."""
        client = _client(ctx)
        if mine:
            principal = client.call("GET", "/v1/me")["id"]
        params = {"active": "true" if active else None, "principal": principal, "api": api}
        items = client.call("GET", "/v1/grants", params=params)["items"]
        listing(
            output,
            items,
            "Grants",
            ["id", "status", "principal", "api", "scopes", "expires"],
            [
                (
                    g["id"],
                    g["status"],
                    g["principal"],
                    g["api"],
                    "\n".join(g["scopes"]),
                    g["expires_at"],
                )
                for g in items
            ],
        )

    @app.command()
    def token(ctx: typer.Context, grant_id: str, output: Output = OutputOption) -> None:
        """Print a fresh token for one of your grants."""
        issued = _token(_client(ctx), grant_id)
        if output is Output.JSON:
            emit_json(issued)
        else:
            typer.echo(issued["token"])

    @app.command()
    def release(ctx: typer.Context, grant_id: str) -> None:
        """End one of your own grants now."""
        ended = _client(ctx).call("POST", f"/v1/grants/{grant_id}/revoke", json_body={"reason": ""})
        typer.echo(f"grant {ended['id']}: {ended['status']}")

    @app.command()
    def revoke(
        ctx: typer.Context,
        grant_id: Annotated[str | None, typer.Argument()] = None,
        reason: Annotated[str, typer.Option("--reason", "-r")] = "",
        principal: Annotated[str | None, typer.Option(help="every active grant of")] = None,
        api: Annotated[str | None, typer.Option(help="every active grant on")] = None,
    ) -> None:
        """Revoke a grant, or every active grant of a principal and/or API (kill switch)."""
        client = _client(ctx)
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
