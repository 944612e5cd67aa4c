"""Asking for access and deciding on it: request, exec, requests, approve, deny, cancel.

``request`` and ``exec`` first look for an active grant of the caller on the API that
already covers every requested scope for long enough, and reuse it rather than file a
new request (``--new`` files one regardless). A filed request carries one random
``Idempotency-Key`` per invocation, so the client's retry after a lost answer never
files it twice.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from datetime import timedelta
from typing import Annotated, Any

import typer

from jitgate.cli.client import Client, fail
from jitgate.cli.output import Output, OutputOption, emit_json, err_console, listing
from jitgate.domain.durations import format_duration, parse_duration
from jitgate.domain.scopes import covers_all, parse_scope
from jitgate.errors import InvalidInput

ScopeOption = Annotated[
    list[str], typer.Option("--scope", "-s", help="'METHODS /path/pattern' (repeatable)")
]
ForOption = Annotated[str, typer.Option("--for", help="duration: 90s, 15m, 1h, 1h30m")]
ReasonOption = Annotated[str, typer.Option("--reason", "-r", help="why you need it")]
TicketOption = Annotated[str | None, typer.Option(help="ticket reference")]
CommentOption = Annotated[str, typer.Option("--comment", "-m")]
NewOption = Annotated[
    bool, typer.Option("--new", help="file a new request even if a grant already covers it")
]
WaitTimeout = Annotated[float, typer.Option(help="seconds to wait for a decision")]

# A grant is reused only if it has at least min(requested duration, this) left.
REUSE_MIN_LEFT = timedelta(minutes=5)


def client_of(ctx: typer.Context) -> Client:
    client: Client = ctx.obj
    return client


def _file(
    client: Client, api: str, scopes: list[str], duration: str, reason: str, ticket: str | None
) -> dict[str, Any]:
    body = {"api": api, "scopes": scopes, "duration": duration, "reason": reason, "ticket": ticket}
    created: dict[str, Any] = client.call(
        "POST", "/v1/requests", json_body=body, idempotency_key=secrets.token_urlsafe(24)
    )
    return created


def _reusable(client: Client, api: str, scopes: list[str], duration: str) -> dict[str, Any] | None:
    """The caller's active grant on ``api`` covering every scope for long enough, if any
    (the one with the most time left)."""
    try:
        wanted = [parse_scope(s) for s in scopes]
        needed = min(parse_duration(duration), REUSE_MIN_LEFT).total_seconds()
    except InvalidInput:
        return None  # filing the request makes the server explain what is wrong
    me = client.call("GET", "/v1/me")["id"]
    params = {"active": "true", "principal": me, "api": api}
    fitting = [
        g
        for g in client.call("GET", "/v1/grants", params=params)["items"]
        if g["remaining_seconds"] >= needed
        and covers_all((parse_scope(s) for s in g["scopes"]), wanted)
    ]
    if not fitting:
        return None
    grant: dict[str, Any] = max(fitting, key=lambda g: g["remaining_seconds"])
    left = format_duration(timedelta(seconds=grant["remaining_seconds"]))
    typer.echo(
        f"reusing grant {grant['id']} (expires in {left}); --new files a new request", err=True
    )
    return grant


def wait_for_decision(client: Client, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    shown = False
    while request["status"] == "pending":
        if not shown:
            err_console.print(
                f"request {request['id']} is pending: {_needs(request)}; waiting…",
                markup=False,
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


def _needs(request: dict[str, Any]) -> str:
    """What a pending request still waits for: ``1 approval(s) from approvers``, or per step."""
    decision = request["decision"]
    steps = decision.get("steps") or []
    if len(steps) > 1:
        return "approval steps " + ", then ".join(
            f"{s['name']} ({s['count']} from {_who(s)})" for s in steps
        )
    return f"{decision['approvals_required']} approval(s) from " + (
        _who(steps[0]) if steps else ", ".join(decision["approver_groups"])
    )


def _who(step: dict[str, Any]) -> str:
    return ", ".join([*step["groups"], *step["principals"]]) or "anyone eligible"


def require_approved(request: dict[str, Any]) -> str:
    if request["status"] != "approved":
        reasons = "; ".join(request["decision"]["reasons"]) or request["status"]
        fail(f"request {request['id']} was {request['status']}: {reasons}")
    grant_id: str = request["grant_id"]
    return grant_id


def fresh_token(client: Client, grant_id: str) -> dict[str, Any]:
    issued: dict[str, Any] = client.call("POST", f"/v1/grants/{grant_id}/token")
    return issued


def summarise(created: dict[str, Any]) -> None:
    """A filed request's outcome for people; exit 1 if it was denied."""
    decision = created["decision"]
    typer.echo(
        f"request {created['id']}: {created['status']} (rule {decision['rule'] or '-'}, "
        f"risk {decision['risk']['score']})"
    )
    for line in decision["reasons"]:
        typer.echo(f"  - {line}")
    if created["status"] == "approved":
        grant = created.get("grant") or {}
        if grant.get("extends"):
            typer.echo(
                f"grant {created['grant_id']}: continues {grant['extends']} from "
                f"{grant['not_before']} until {grant['expires_at']}"
            )
        else:
            typer.echo(
                f"grant {created['grant_id']}: "
                f"get a token with 'jitgate token {created['grant_id']}'"
            )
    elif created["status"] == "pending":
        typer.echo(f"  waiting for {_needs(created)}")
    elif created["status"] == "denied":
        raise typer.Exit(1)


def _progress(request: dict[str, Any]) -> str:
    """``1/2 approvals``: approvals given for the request's current terms."""
    current = sum(
        1
        for a in request["approvals"]
        if a["verdict"] == "approve" and a.get("terms_hash") == request["terms_hash"]
    )
    return f"{current}/{request['decision']['approvals_required']} approvals"


def _show_terms(request: dict[str, Any], scopes: list[str], duration: str | None) -> None:
    """What an approver is about to approve; the outcome follows on the last line."""
    lines = [
        f"approving {request['id']} ({request['status']}): {request['requester']} on "
        f"{request['api']}, risk {request['decision']['risk']['score']}",
        f"  reason: {request['reason']}"
        + (f" (ticket {request['ticket']})" if request["ticket"] else ""),
    ]
    terms_scopes = request["approved_scopes"] or request["scopes"]
    terms_for = request["approved_duration"] or request["duration"]
    if request["extends_grant"]:
        lines.append(f"  extends grant {request['extends_grant']}")
    if request["approved_scopes"] or request["approved_duration"]:
        asked = ", ".join(request["scopes"])
        lines.append(
            f"  as narrowed by an earlier approver (asked: {asked} for {request['duration']})"
        )
    lines += [f"  scope: {s}" for s in terms_scopes]
    lines.append(f"  for: {terms_for}")
    if scopes or duration:
        lines.append("narrowing to:")
        lines += [f"  scope: {s}" for s in scopes or terms_scopes]
        lines.append(f"  for: {duration or terms_for}")
    typer.echo("\n".join(lines))


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
        timeout: WaitTimeout = 3600,
        new: NewOption = False,
        output: Output = OutputOption,
    ) -> None:
        """File an access request (or reuse a grant that covers it). With --wait, print
        the grant token once approved."""
        client = client_of(ctx)
        reused = None if new else _reusable(client, api, scope, duration)
        if reused is not None:
            if wait:
                issued = fresh_token(client, reused["id"])
                if output is Output.JSON:
                    emit_json({"request": None, "reused": True, **issued})
                else:
                    typer.echo(issued["token"])
            elif output is Output.JSON:
                emit_json({"reused": True, "grant_id": reused["id"], "grant": reused})
            else:
                typer.echo(f"grant {reused['id']}: get a token with 'jitgate token {reused['id']}'")
            return
        created = _file(client, api, scope, duration, reason, ticket)
        if wait:
            decided = wait_for_decision(client, created, timeout)
            grant_id = require_approved(decided)
            issued = fresh_token(client, grant_id)
            if output is Output.JSON:
                emit_json({"request": decided, "reused": False, **issued})
            else:
                err_console.print(
                    f"grant {grant_id} until {issued['expires_at']} via {issued['gateway_url']}"
                )
                typer.echo(issued["token"])
            return
        if output is Output.JSON:
            emit_json(created)
            return
        summarise(created)

    @app.command(name="exec")
    def exec_(
        ctx: typer.Context,
        api: str,
        scope: ScopeOption,
        duration: ForOption,
        reason: ReasonOption,
        command: Annotated[list[str], typer.Argument(help="the command to run, after --")],
        ticket: TicketOption = None,
        timeout: WaitTimeout = 3600,
        new: NewOption = False,
    ) -> None:
        """Run COMMAND with JITGATE_TOKEN and JITGATE_URL set. A grant it filed for is
        released when COMMAND ends; a reused one is left as it was."""
        client = client_of(ctx)
        reused = None if new else _reusable(client, api, scope, duration)
        if reused is not None:
            grant_id = reused["id"]
        else:
            filed = _file(client, api, scope, duration, reason, ticket)
            grant_id = require_approved(wait_for_decision(client, filed, timeout))
        issued = fresh_token(client, grant_id)

        def release() -> bool:
            """End the grant if this command filed for it; whether it did."""
            if reused is not None:
                return False
            client.call("POST", f"/v1/grants/{grant_id}/revoke", json_body={"reason": "released"})
            return True

        env = {**os.environ, "JITGATE_TOKEN": issued["token"], "JITGATE_URL": issued["gateway_url"]}
        code = 1
        try:
            child = subprocess.Popen(command, env=env)  # noqa: S603 - the user's own command
        except OSError as exc:
            release()
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
                if release():
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
        """List access requests (a pending one shows what it waits for)."""
        client = client_of(ctx)
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
                    r["status"] + (f"\n{_needs(r)}" if r["status"] == "pending" else ""),
                    r["requester"],
                    r["api"],
                    "\n".join(r["approved_scopes"] or r["scopes"]),
                    r["approved_duration"] or r["duration"],
                    r["decision"]["risk"]["score"],
                    r["reason"]
                    + (f"\n(extends {r['extends_grant']})" if r["extends_grant"] else ""),
                )
                for r in items
            ],
        )

    def _decide(client: Client, verb: str, request_id: str, body: dict[str, Any]) -> None:
        result = client.call("POST", f"/v1/requests/{request_id}/{verb}", json_body=body)
        line = f"request {result['id']}: {result['status']}"
        if result.get("grant_id"):
            line += f" (grant {result['grant_id']})"
        elif result["status"] == "pending":
            line += f" ({_progress(result)}; needs {_needs(result)})"
        typer.echo(line)

    @app.command()
    def approve(
        ctx: typer.Context,
        request_id: str,
        comment: CommentOption = "",
        scope: Annotated[
            list[str] | None,
            typer.Option("--scope", "-s", help="narrow to these scopes (repeatable)"),
        ] = None,
        duration: Annotated[str | None, typer.Option("--for", help="shorten to")] = None,
    ) -> None:
        """Approve a pending request as shown (optionally narrower: --scope, --for).

        The approval is bound to the terms shown: if the request changes in between,
        it is refused (409) and nothing is approved.
        """
        client = client_of(ctx)
        shown = client.call("GET", f"/v1/requests/{request_id}")
        _show_terms(shown, scope or [], duration)
        body: dict[str, Any] = {"comment": comment, "terms_hash": shown["terms_hash"]}
        if scope:
            body["scopes"] = scope
        if duration is not None:
            body["duration"] = duration
        _decide(client, "approve", shown["id"], body)

    @app.command()
    def deny(ctx: typer.Context, request_id: str, comment: CommentOption = "") -> None:
        """Deny a pending request."""
        _decide(client_of(ctx), "deny", request_id, {"comment": comment})

    @app.command()
    def cancel(ctx: typer.Context, request_id: str, comment: CommentOption = "") -> None:
        """Cancel your own pending request."""
        _decide(client_of(ctx), "cancel", request_id, {"comment": comment})
