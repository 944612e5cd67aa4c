"""The CLI's commands against a control plane (served in process), on both databases."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from jitgate.services import audit
from jitgate.services.context import Context
from jitgate.storage.audit_repo import AuditRepo
from tests.cli.conftest import Cli, one_line_error
from tests.e2e import tampering

READ = ("request", "demo", "--scope", "GET /v1/**", "--reason", "debug order 42")
WRITE = ("request", "demo", "--scope", "POST /v1/orders", "--reason", "fix order 42")


def as_json(out: str) -> Any:
    return json.loads(out)


def pending_write(cli: Cli) -> str:
    created = as_json(cli.ok("alice", *WRITE, "--for", "30m", "-o", "json"))
    assert created["status"] == "pending"
    return str(created["id"])


def grants(cli: Cli, *args: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = as_json(cli.ok("admin", "grants", "-o", "json", *args))
    return found


def test_request_wait_prints_only_the_token(cli: Cli) -> None:
    result = cli("alice", *READ, "--for", "10m", "--wait")
    assert result.exit_code == 0, result.stderr
    [token] = result.stdout.split()
    assert token.startswith("eyJ")
    assert token.count(".") == 2
    assert "grant grt_" in result.stderr
    assert "http://gateway.test/demo" in result.stderr


@pytest.mark.parametrize(
    ("spelled", "seconds", "status"),
    [("90s", 90, "approved"), ("900", 900, "approved"), ("15m", 900, "approved"),
     ("16m", 960, "denied"), ("1h30m", 5400, "denied")],
)  # fmt: skip
def test_request_durations(cli: Cli, spelled: str, seconds: int, status: str) -> None:
    result = cli("alice", *READ, "--for", spelled, "-o", "json")
    created = as_json(result.stdout)
    assert created["duration_seconds"] == seconds
    assert created["status"] == status
    assert result.exit_code == 0


def test_a_denied_request_exits_1_with_its_reasons(cli: Cli) -> None:
    result = cli("alice", "request", "demo", "-s", "OPTIONS /x", "--for", "5m", "-r", "why")
    assert result.exit_code == 1
    assert ": denied (rule -, risk " in result.stdout
    assert "  - " in result.stdout, "the reasons are listed"
    waited = cli("alice", "request", "demo", "-s", "OPTIONS /x", "--for", "5m", "-r", "x", "--wait")
    assert waited.exit_code == 1
    assert "was denied" in one_line_error(waited)


def test_a_bad_duration_is_the_servers_clear_error(cli: Cli) -> None:
    result = cli("alice", *READ, "--for", "ten minutes")
    assert result.exit_code == 1
    line = one_line_error(result)
    assert "invalid duration 'ten minutes'" in line


def test_waiting_gives_up_after_the_timeout(cli: Cli) -> None:
    result = cli("alice", *WRITE, "--for", "30m", "--wait", "--timeout", "0")
    assert result.exit_code == 1
    assert "is pending: 1 approval(s) from approvers" in result.stderr
    assert "still pending after 0s" in result.stderr


def test_the_approval_workflow(cli: Cli) -> None:
    request_id = pending_write(cli)
    listed = as_json(cli.ok("bob", "requests", "--pending", "-o", "json"))
    assert [r["id"] for r in listed] == [request_id]
    table = cli.ok("bob", "requests", "--pending")  # 80 columns under CliRunner
    assert request_id in table, "an id in a table is never folded: it is copied from there"
    assert as_json(cli.ok("bob", "requests", "--mine", "-o", "json")) == []

    own = cli("alice", "approve", request_id)
    assert own.exit_code == 1
    assert one_line_error(own).startswith("error: 403: ")
    assert "[self-approval]" in own.stderr

    approved = cli.ok("bob", "approve", request_id, "--comment", "ok")
    assert "  scope: POST /v1/orders" in approved, "the terms being approved are shown"
    assert approved.splitlines()[-1].startswith(f"request {request_id}: approved (grant grt_")
    again = cli("carol", "approve", request_id)
    assert again.exit_code == 1
    assert "409" in one_line_error(again)

    [grant] = as_json(cli.ok("alice", "grants", "--active", "-o", "json"))
    assert grant["scopes"] == ["POST /v1/orders"]
    token = cli.ok("alice", "token", grant["id"]).strip()
    assert token.count(".") == 2
    assert "403" in one_line_error(cli("bob", "token", grant["id"]))


def test_deny_and_cancel(cli: Cli) -> None:
    denied = pending_write(cli)
    assert cli.ok("carol", "deny", denied, "-m", "no").strip() == f"request {denied}: denied"
    cancelled = pending_write(cli)
    assert cli.ok("alice", "cancel", cancelled).strip() == f"request {cancelled}: cancelled"
    assert as_json(cli.ok("bob", "requests", "--pending", "-o", "json")) == []


def test_release_revoke_and_the_kill_switch(cli: Cli) -> None:
    first, second, third = (
        as_json(cli.ok("alice", *READ, "--for", "10m", "--new", "-o", "json"))["grant_id"]
        for _ in range(3)
    )
    assert cli.ok("alice", "release", first).strip() == f"grant {first}: released"
    no_reason = cli("bob", "revoke", second)
    assert no_reason.exit_code == 1
    assert "reason" in one_line_error(no_reason)
    assert cli.ok("bob", "revoke", second, "-r", "incident 7").strip() == f"grant {second}: revoked"
    both = cli("admin", "revoke", third, "--principal", "alice", "-r", "x")
    assert both.exit_code == 2
    assert "not both" in one_line_error(both)
    neither = cli("admin", "revoke", "-r", "x")
    assert neither.exit_code == 2
    killed = cli.ok("admin", "revoke", "--principal", "alice", "--reason", "incident 8")
    assert killed.splitlines() == ["revoked 1 grant(s)", f"  {third} (alice on demo)"]
    statuses = {g["id"]: g["status"] for g in grants(cli)}
    assert statuses == {first: "released", second: "revoked", third: "revoked"}


def test_exec_runs_the_command_with_the_grant_and_releases_it(cli: Cli) -> None:
    check = 'test "$JITGATE_URL" = http://gateway.test/demo && test "${JITGATE_TOKEN#eyJ}" != ""'
    result = cli("alice", "exec", "demo", "-s", "GET /v1/**", "--for", "5m", "-r", "t", "--", "sh",
                 "-c", check)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "released" in result.stderr
    [grant] = grants(cli)
    assert grant["status"] == "released"


@pytest.mark.parametrize("code", [1, 7, 255])
def test_exec_exits_with_the_commands_code(cli: Cli, code: int) -> None:
    result = cli("alice", "exec", "demo", "-s", "GET /v1/**", "--for", "5m", "-r", "t", "--", "sh",
                 "-c", f"exit {code}")  # fmt: skip
    assert result.exit_code == code
    assert [g["status"] for g in grants(cli)] == ["released"]


def test_exec_of_a_missing_command_is_127_and_releases(cli: Cli) -> None:
    result = cli("alice", "exec", "demo", "-s", "GET /v1/**", "--for", "5m", "-r", "t", "--",
                 "/nonexistent/command")  # fmt: skip
    assert result.exit_code == 127
    assert "cannot run '/nonexistent/command'" in one_line_error(result)
    assert [g["status"] for g in grants(cli)] == ["released"]


def test_exec_of_a_denied_request_runs_nothing(cli: Cli, tmp_path: Any) -> None:
    marker = tmp_path / "ran"
    result = cli("alice", "exec", "demo", "-s", "OPTIONS /x", "--for", "5m", "-r", "t", "--",
                 "touch", str(marker))  # fmt: skip
    assert result.exit_code == 1
    assert "was denied" in one_line_error(result)
    assert not marker.exists()


def test_administration(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk_cli_test_secret_never_printed"
    missing = cli("admin", "api", "add", "payments", "--base-url", "https://pay.example.com")
    assert missing.exit_code == 1
    assert "JITGATE_API_SECRET" in one_line_error(missing)
    monkeypatch.setenv("JITGATE_API_SECRET", secret)
    added = cli.ok("admin", "api", "add", "payments", "--base-url", "https://pay.example.com",
                   "--owner", "approvers")  # fmt: skip
    assert added.strip() == "API payments registered: https://pay.example.com"
    refused = cli("alice", "api", "add", "other", "--base-url", "https://o.example.com")
    assert refused.exit_code == 1
    assert "[not-admin]" in one_line_error(refused)
    apis = as_json(cli.ok("alice", "api", "list", "-o", "json"))
    assert sorted(a["name"] for a in apis) == ["demo", "payments"]
    assert secret not in json.dumps(apis)
    assert secret not in cli.ok("alice", "api", "list")
    assert (
        cli.ok("admin", "api", "rotate-secret", "payments").strip() == "secret of payments rotated"
    )

    assert "principal dave created (groups: engineering)" in cli.ok(
        "admin", "principal", "add", "dave", "--group", "engineering"
    )
    token = cli.ok("admin", "principal", "token", "dave").strip()
    assert token.startswith("jgp_")
    cli.tokens["dave"] = token
    assert as_json(cli.ok("dave", "whoami"))["groups"] == ["engineering"]
    ids = {p["id"] for p in as_json(cli.ok("dave", "principal", "list", "-o", "json"))}
    assert ids == {"alice", "bob", "carol", "admin", "dave"}


def test_audit_lists_exports_and_verifies(cli: Cli) -> None:
    cli.ok("alice", *READ, "--for", "10m", "--wait")
    events = as_json(cli.ok("admin", "audit", "-o", "json"))
    types = {e["type"] for e in events}
    assert {"request.created", "request.decided", "grant.issued", "grant.token_issued"} <= types
    only = as_json(cli.ok("admin", "audit", "--type", "grant.*", "-o", "json"))
    assert {e["type"] for e in only} == {"grant.issued", "grant.token_issued"}
    lines = cli.ok("admin", "audit", "export", "--format", "jsonl").splitlines()
    exported = [json.loads(line) for line in lines]
    assert [e["seq"] for e in exported] == list(range(1, len(exported) + 1))
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(exported))
    assert "403" in one_line_error(cli("alice", "audit"))
    verified = cli.ok("admin", "audit", "verify")
    assert verified.startswith(f"audit log intact: {len(exported)} events")


def test_audit_verify_detects_tampering_through_the_server_and_offline(
    cli: Cli, ctx: Context
) -> None:
    cli.ok("alice", *READ, "--for", "10m", "--wait")
    url = ctx.store.engine.url.render_as_string(hide_password=False)
    assert cli.ok("admin", "audit", "verify", "--database", url).startswith("audit log intact")
    with ctx.store.transaction() as tx:
        tx.connection.execute(
            text("UPDATE audit_events SET actor = 'mallory' WHERE type = 'request.created'")
        )
        [seq] = tx.connection.execute(
            text("SELECT seq FROM audit_events WHERE type = 'request.created'")
        ).scalars()
    for args in ([], ["--database", url]):
        result = cli("admin", "audit", "verify", *args)
        assert result.exit_code == 1
        assert f"AUDIT LOG TAMPERED: first bad event: seq {seq}:" in result.stderr
        report = as_json(cli("admin", "audit", "verify", "-o", "json", *args).stdout)
        assert report["ok"] is False
        assert report["first_bad_seq"] == seq


def test_audit_verify_offline_names_a_missing_database(cli: Cli, tmp_path: Any) -> None:
    missing = tmp_path / "nowhere" / "jitgate.db"
    result = cli("admin", "audit", "verify", "--database", f"sqlite:///{missing}")
    assert result.exit_code == 1
    assert "no SQLite database file" in one_line_error(result)
    assert not missing.parent.exists(), "verifying must not create a database"
    wrong = cli("admin", "audit", "verify", "--database", "postgresql://u:hunter2@127.0.0.1:1/x")
    assert wrong.exit_code == 1
    line = one_line_error(wrong)
    assert "cannot read the audit log" in line
    assert "hunter2" not in line


@pytest.mark.parametrize("case", ["edit-and-rehash", "insert", "rewrite-tail", "truncate"])
def test_audit_verify_sees_through_cleverer_tampering(cli: Cli, ctx: Context, case: str) -> None:
    """Rehashed edits and insertions break the next link; a consistently rewritten or cut
    log keeps its links but not its signed checkpoint."""
    for _ in range(2):
        cli.ok("alice", *READ, "--for", "10m", "--wait")
    checkpoint = audit.checkpoint(ctx)
    assert checkpoint is not None
    cli.ok("alice", *READ, "--for", "10m", "--wait")
    with ctx.store.read() as tx:
        events = list(AuditRepo(tx.connection).stream())
    n = next(e.seq for e in events if e.type == "request.created")
    tamper, seq, expected = {
        "edit-and-rehash": (
            tampering.edit_and_rehash(events),
            n,
            f"first bad event: seq {n + 1}: ",
        ),
        "insert": (tampering.insert(events), n, f"first bad event: seq {n + 2}: "),
        "rewrite-tail": (tampering.rewrite_tail(events), n, "history was rewritten"),
        "truncate": (tampering.truncate(events), checkpoint.seq, "truncated"),
    }[case]
    with ctx.store.transaction() as tx:
        tamper(tx, seq)
    url = ctx.store.engine.url.render_as_string(hide_password=False)
    for args in ([], ["--database", url]):
        result = cli("admin", "audit", "verify", *args)
        assert result.exit_code == 1, (args, result.stdout)
        assert result.stderr.startswith("AUDIT LOG TAMPERED: "), result.stderr
        assert expected in result.stderr, (args, result.stderr)


def test_an_exported_checkpoint_catches_a_rewrite_of_the_whole_database(
    cli: Cli, ctx: Context, tmp_path: Path
) -> None:
    """Rewrite the tail, then also the recorded head and the stored checkpoints: the log
    is consistent with itself, and only a checkpoint kept elsewhere shows it is false."""
    cli.ok("alice", *READ, "--for", "10m", "--wait")
    exported = tmp_path / "checkpoint.json"
    exported.write_text(cli.ok("admin", "audit", "checkpoint"))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(ctx.keyring.jwks()))
    external = ["--checkpoint", str(exported), "--jwks", str(jwks)]
    url = ctx.store.engine.url.render_as_string(hide_password=False)
    for args in ([], ["--database", url]):
        assert "matches the exported checkpoint" in cli.ok(
            "admin", "audit", "verify", *args, *external
        )

    with ctx.store.read() as tx:
        events = list(AuditRepo(tx.connection).stream())
    n = next(e.seq for e in events if e.type == "request.created")
    with ctx.store.transaction() as tx:
        tampering.rewrite_tail(events)(tx, n)
        rewritten = list(AuditRepo(tx.connection).stream())
        tx.connection.execute(text("DELETE FROM audit_checkpoints"))
        tx.connection.execute(text("UPDATE audit_head SET hash = :h"), {"h": rewritten[-1].hash})
    for args in ([], ["--database", url]):
        assert cli("admin", "audit", "verify", *args).exit_code == 0  # fooled on its own
        caught = cli("admin", "audit", "verify", *args, *external)
        assert caught.exit_code == 1, (args, caught.stdout)
        assert "exported checkpoint" not in caught.stdout
        assert "history was rewritten" in caught.stderr, caught.stderr


def test_verify_with_a_checkpoint_needs_its_jwks(cli: Cli, tmp_path: Path) -> None:
    result = cli("admin", "audit", "verify", "--checkpoint", str(tmp_path / "cp.json"))
    assert result.exit_code == 2
    assert "--jwks" in one_line_error(result)
