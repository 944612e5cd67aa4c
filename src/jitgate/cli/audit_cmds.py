"""The audit trail: list and follow, export, verify (through the server or on a database)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from jitgate.audit.checkpoint import Checkpoint, check_against_chain, verify_checkpoint_signature
from jitgate.cli.client import Client, fail
from jitgate.cli.output import Output, OutputOption, emit_json, table
from jitgate.errors import JitgateError
from jitgate.tokens.keys import public_keys_from_jwks

audit_app = typer.Typer(help="The audit trail: list, follow, export and verify.")


def _filters(ctx: typer.Context) -> dict[str, Any]:
    filters: dict[str, Any] = ctx.meta.get("audit_filters", {})
    return filters


def _page(client: Client, filters: dict[str, Any], after: int, limit: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = client.call(
        "GET", "/v1/audit", params={**filters, "after": after, "limit": limit}
    )["items"]
    return items


def _row(e: dict[str, Any]) -> tuple[Any, ...]:
    data = e.get("data") or {}
    summary = ", ".join(f"{k}={v}" for k, v in data.items() if k not in ("jti",))
    return (
        e["seq"],
        e["at"][:23],
        e["type"],
        e["actor"],
        e["principal"],
        e["api"],
        e["grant"] or e["request"],
        summary[:120],
    )


@audit_app.callback(invoke_without_command=True)
def audit(
    ctx: typer.Context,
    type_: Annotated[
        str | None, typer.Option("--type", help="e.g. access.denied or access.*")
    ] = None,
    actor: Annotated[str | None, typer.Option()] = None,
    principal: Annotated[str | None, typer.Option()] = None,
    api: Annotated[str | None, typer.Option()] = None,
    grant: Annotated[str | None, typer.Option()] = None,
    request: Annotated[str | None, typer.Option()] = None,
    since: Annotated[str | None, typer.Option(help="ISO 8601 time")] = None,
    until: Annotated[str | None, typer.Option(help="ISO 8601 time")] = None,
    limit: Annotated[int, typer.Option(help="show the latest N matching events")] = 100,
    all_: Annotated[bool, typer.Option("--all", help="every matching event, oldest first")] = False,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing new events")
    ] = False,
    output: Output = OutputOption,
) -> None:
    """List audit events (filters combine); with --follow, keep printing new ones.

    With -o json: a JSON array, or JSON Lines (one event a line) with --follow.
    """
    filters = {
        "type": type_,
        "actor": actor,
        "principal": principal,
        "api": api,
        "grant": grant,
        "request": request,
        "since": since,
        "until": until,
    }
    ctx.meta["audit_filters"] = {k: v for k, v in filters.items() if v is not None}
    if ctx.invoked_subcommand is not None:
        return
    client: Client = ctx.obj
    if all_:
        events = list(_all(client, _filters(ctx)))
    else:
        events = client.call(
            "GET",
            "/v1/audit",
            params={**_filters(ctx), "before": 2**62, "limit": max(1, min(limit, 1000))},
        )["items"]
    if follow and output is Output.JSON:
        for e in events:
            typer.echo(json.dumps(e))
    elif output is Output.JSON:
        emit_json(events)
    else:
        table(
            "Audit",
            ["seq", "at", "type", "actor", "principal", "api", "grant/request", "data"],
            [_row(e) for e in events],
        )
    if not follow:
        return
    after = events[-1]["seq"] if events else 0
    try:
        while True:
            time.sleep(1.0)
            for e in _page(client, _filters(ctx), after, 1000):
                after = e["seq"]
                line = (
                    json.dumps(e)
                    if output is Output.JSON
                    else "  ".join("" if v is None else str(v) for v in _row(e))
                )
                typer.echo(line)
    except KeyboardInterrupt:
        return


def _all(client: Client, filters: dict[str, Any]) -> Iterator[dict[str, Any]]:
    after = 0
    while True:
        page = _page(client, filters, after, 1000)
        yield from page
        if len(page) < 1000:
            return
        after = page[-1]["seq"]


@audit_app.command("export")
def export(
    ctx: typer.Context,
    format_: Annotated[str, typer.Option("--format", help="jsonl")] = "jsonl",
) -> None:
    """Write events as JSON Lines on stdout, with their hashes, for offline checks.

    Everything, or what the filters before the subcommand select:
    ``jitgate audit --type 'access.*' export``.
    """
    if format_ != "jsonl":
        fail("only --format jsonl is supported", code=2)
    for e in _all(ctx.obj, _filters(ctx)):
        typer.echo(json.dumps(e, sort_keys=True))


@audit_app.command("checkpoint")
def checkpoint_now(ctx: typer.Context) -> None:
    """Sign the current head now and print the checkpoint (JSON) to keep elsewhere.

    Keep it with the JWKS (GET /.well-known/jwks.json); later,
    'jitgate audit verify --checkpoint FILE --jwks FILE' holds the log against it.
    """
    result = ctx.obj.call("POST", "/v1/audit/checkpoints")
    if result["checkpoint"] is None:
        fail("the audit log is empty: nothing to checkpoint")
    emit_json(result["checkpoint"])


@audit_app.command("verify")
def verify(
    ctx: typer.Context,
    database: Annotated[
        str | None, typer.Option(help="verify this database (or a copy) directly, no server")
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="also hold the log against this exported checkpoint (JSON)"),
    ] = None,
    jwks: Annotated[
        Path | None,
        typer.Option(help="the JWKS you saved, to check --checkpoint's signature with"),
    ] = None,
    output: Output = OutputOption,
) -> None:
    """Check the hash chain and the latest signed checkpoint; non-zero exit if tampered.

    With --checkpoint and --jwks, the log is also held against a checkpoint kept outside
    the database, checked with keys kept outside it: a rewrite of the whole database,
    stored checkpoints included, is caught too.
    """
    if (checkpoint is None) != (jwks is None):
        fail("--checkpoint and --jwks go together", code=2)
    external = _load_external(checkpoint, jwks) if checkpoint and jwks else None
    seq = external[0].seq if external else None
    if database is None:
        result = ctx.obj.call("GET", "/v1/audit/verify")
        hash_at_seq = _server_hash_at(ctx.obj, seq) if seq else None
    else:
        result, hash_at_seq = _verify_database(database, seq)
    if external is not None:
        cp, keys = external
        problem = (
            None
            if verify_checkpoint_signature(cp, keys)
            else f"exported checkpoint at seq {cp.seq}: signature does not verify with the JWKS"
        ) or check_against_chain(cp, hash_at_seq, result["head_seq"])
        result["external_checkpoint"] = {"seq": cp.seq, "problem": problem}
        if problem is not None:
            result["ok"] = False
            result["problem"] = result.get("problem") or problem
    if output is Output.JSON:
        emit_json(result)
    elif result["ok"]:
        typer.echo(
            f"audit log intact: {result['checked']} events, head {result['head_seq']} "
            f"{result['head_hash'][:16]}…"
        )
        if result.get("external_checkpoint"):
            seq = result["external_checkpoint"]["seq"]
            typer.echo(f"matches the exported checkpoint at seq {seq}")
        if result.get("checkpoint"):
            typer.echo(f"matches the signed checkpoint at seq {result['checkpoint']['seq']}")
        else:
            typer.echo(
                "no signed checkpoint yet: events cut from the end could not be detected "
                "(the first is written after audit.checkpoint_interval)"
            )
    else:
        problem = result.get("problem") or result.get("checkpoint_problem")
        bad = result.get("first_bad_seq")
        where = f"first bad event: seq {bad}: " if bad is not None else ""
        typer.secho(f"AUDIT LOG TAMPERED: {where}{problem}", fg=typer.colors.RED, err=True)
    if not result["ok"]:
        raise typer.Exit(1)


def _load_external(checkpoint: Path, jwks: Path) -> tuple[Checkpoint, dict[str, Ed25519PublicKey]]:
    try:
        cp = Checkpoint.from_dict(json.loads(checkpoint.read_text()))
        keys = public_keys_from_jwks(json.loads(jwks.read_text()))
    except OSError as exc:
        fail(f"cannot read {exc.filename}: {exc.strerror}")
    except ValueError as exc:  # not JSON
        fail(f"not a JSON file: {exc}")
    except JitgateError as exc:
        fail(exc.detail)
    return cp, keys


def _server_hash_at(client: Client, seq: int) -> str | None:
    items = client.call("GET", "/v1/audit", params={"after": seq - 1, "limit": 1})["items"]
    return str(items[0]["hash"]) if items and items[0]["seq"] == seq else None


def _verify_database(url: str, seq: int | None) -> tuple[dict[str, Any], str | None]:
    """Verify a database directly; also the hash of event ``seq`` when asked."""
    from sqlalchemy.engine import URL, make_url  # noqa: PLC0415
    from sqlalchemy.exc import ArgumentError  # noqa: PLC0415

    try:
        target: URL | None = make_url(url)
    except ArgumentError:
        target = None  # Store.open names the malformed URL below
    shown = target.render_as_string(hide_password=True) if target else url
    # Opening a missing SQLite file would create an empty one (and its directory).
    if target is not None and target.get_backend_name() == "sqlite":
        database = target.database or ""
        if not Path(database).is_file():
            fail(f"no SQLite database file at {database!r}")
    from jitgate.services.audit import stored_public_keys, verify_store  # noqa: PLC0415 - storage only when asked
    from jitgate.storage.store import Store  # noqa: PLC0415

    try:
        store = Store.open(url, migrate_schema=False)
        result = verify_store(store, stored_public_keys(store)).as_dict()
        with store.read() as tx:
            hash_at_seq = tx.audit.hash_at(seq) if seq else None
        store.close()
    except JitgateError as exc:
        fail(exc.detail)
    except Exception as exc:  # a missing file or table must read as an error, not a trace
        cause = getattr(exc, "orig", None) or exc  # the driver's error, without SQL
        first = (str(cause).strip().splitlines() or [""])[0]
        fail(f"cannot read the audit log from {shown}: {type(cause).__name__}: {first}")
    return result, hash_at_seq


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")
