"""The README's demo walk-through, step by step, with real processes and sockets.

The steps share one running instance per backend (the ``demo`` fixture) and run in
file order; each step sets up what it checks, so any one of them can also run alone.
Near the end the server is restarted on the same state, then stopped for good so that
copies of its database can be tampered with and verified offline.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from tests.e2e import tampering
from tests.e2e.conftest import DEMO_SECRET_PREFIX, Demo, assert_problem

pytestmark = pytest.mark.e2e

READ = ["demo", "--scope", "GET /v1/**", "--reason", "debug order 42"]


def curl(url_and_path: str) -> str:
    """A shell command that GETs ``$JITGATE_URL`` + path with the grant token."""
    if shutil.which("curl"):
        return f'curl -fsS "$JITGATE_URL{url_and_path}" -H "Authorization: Bearer $JITGATE_TOKEN"'
    script = (
        "import os, urllib.request as u; r = u.Request(os.environ['JITGATE_URL'] + "
        f"'{url_and_path}', headers={{'Authorization': 'Bearer ' + os.environ['JITGATE_TOKEN']}}); "
        "print(u.urlopen(r).read().decode())"
    )
    return f'{shlex.quote(sys.executable)} -c "{script}"'


def test_the_demo_writes_private_state_files(demo: Demo) -> None:
    state = demo.server.state_dir
    tokens_file = state / "demo-tokens.json"
    assert stat.S_IMODE(tokens_file.stat().st_mode) == 0o600
    tokens = json.loads(tokens_file.read_text())
    assert set(tokens) == {"alice", "bob", "carol", "admin"}
    assert all(t.startswith("jgp_") for t in tokens.values())
    assert stat.S_IMODE((state / "master.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(demo.cli.config.stat().st_mode) == 0o600
    printed = demo.server.text()
    assert f"--token-file {tokens_file} --key alice" in printed
    assert demo.server.gateway_url in printed


def test_step_2_reads_are_granted_at_once_and_the_key_stays_hidden(demo: Demo) -> None:
    done = demo.cli("alice", "request", *READ, "--for", "10m", "--wait")
    [token] = done.stdout.split()
    echoed = demo.gateway(token, "GET", "/demo/v1/orders/42?expand=items")
    assert echoed.status_code == 200, echoed.text
    echo = echoed.json()
    assert (echo["method"], echo["path"], echo["query"]) == ("GET", "/v1/orders/42", "expand=items")
    assert "authorization" not in {name.lower() for name in echo["headers"]}
    seen = echoed.text + json.dumps(dict(echoed.headers))
    assert token not in seen
    assert "jgp_" not in seen
    assert DEMO_SECRET_PREFIX not in seen
    assert_problem(demo.gateway(token, "POST", "/demo/v1/orders"), 403, "out-of-scope")
    assert demo.http.get(f"{demo.server.gateway_url}/demo/v1/orders/42").status_code == 401


def test_step_3_writes_need_an_approver_who_is_not_the_requester(demo: Demo) -> None:
    created = demo.cli.json(
        "alice", "request", "demo", "--scope", "POST /v1/orders", "--for", "30m",
        "--reason", "fix order 42",
    )  # fmt: skip
    assert created["status"] == "pending"
    listed, own = demo.cli.many(
        [
            ["--profile", "bob", "requests", "--pending", "-o", "json"],
            ["--profile", "alice", "approve", created["id"]],
        ]
    )
    assert created["id"] in {r["id"] for r in json.loads(listed.stdout)}
    assert own.returncode == 1
    assert own.stderr.startswith("error: 403: ")
    assert "Traceback" not in own.stderr

    approved = demo.cli("bob", "approve", created["id"], "--comment", "ok")
    grant_id = re.search(r"\(grant (grt_\w+)\)", approved.stdout)
    assert grant_id, approved.stdout
    active, table, issued = demo.cli.many(
        [
            ["--profile", "alice", "grants", "--active", "-o", "json"],
            ["--profile", "alice", "grants", "--active"],
            ["--profile", "alice", "token", grant_id[1]],
        ]
    )
    assert grant_id[1] in {g["id"] for g in json.loads(active.stdout)}
    assert grant_id[1] in table.stdout
    token = issued.stdout.strip()
    body = '{"order": 42, "status": "fixed"}'
    posted = demo.gateway(
        token, "POST", "/demo/v1/orders", content=body, headers={"Content-Type": "application/json"}
    )
    assert posted.status_code == 200, posted.text
    assert (posted.json()["method"], posted.json()["body"]) == ("POST", body)


def exec_shell(
    demo: Demo, script: str, expect: int
) -> tuple[str, subprocess.CompletedProcess[str]]:
    """``jitgate exec`` of the README's step 4 running ``script``; the grant it used."""
    done = demo.cli(
        "alice", "exec", "demo", "--scope", "GET /v1/**", "--for", "5m", "--reason",
        "smoke test", "--new", "--", "sh", "-c", script, expect=expect,
    )  # fmt: skip
    released = re.search(r"grant (grt_\w+) released", done.stderr)
    assert released, done.stderr
    grant = demo.control("alice", "GET", f"/v1/grants/{released[1]}").json()
    assert grant["status"] == "released"
    return released[1], done


def test_step_4_exec_runs_one_command_and_releases_its_grant(demo: Demo) -> None:
    _, done = exec_shell(demo, curl("/v1/ping") + ' && echo "$JITGATE_TOKEN" >&2', expect=0)
    assert json.loads(done.stdout.strip().splitlines()[-1])["path"] == "/v1/ping"
    used_token = next(line for line in done.stderr.splitlines() if line.startswith("eyJ"))
    assert_problem(demo.gateway(used_token, "GET", "/demo/v1/ping"), 403, "grant-revoked")


def test_step_4_exec_exits_with_the_commands_own_code(demo: Demo) -> None:
    exec_shell(demo, curl("/v1/ping") + " >/dev/null; exit 3", expect=3)


def test_step_5_a_revoked_grant_is_refused_on_the_very_next_call(demo: Demo) -> None:
    issued = demo.cli.json("alice", "request", *READ, "--for", "10m", "--new", "--wait")
    token, grant_id = issued["token"], issued["grant_id"]
    assert demo.gateway(token, "GET", "/demo/v1/orders/42").status_code == 200
    demo.cli("bob", "revoke", grant_id, "--reason", "incident 7")
    refused = demo.gateway(token, "GET", "/demo/v1/orders/42")  # no wait in between
    assert_problem(refused, 403, "grant-revoked")
    assert DEMO_SECRET_PREFIX not in refused.text


def test_step_5_a_short_grant_ends_by_itself(demo: Demo) -> None:
    issued = demo.cli.json("alice", "request", *READ, "--for", "3s", "--new", "--wait")
    assert demo.gateway(issued["token"], "GET", "/demo/v1/orders/42").status_code == 200
    expires = datetime.fromisoformat(issued["expires_at"].replace("Z", "+00:00"))
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.5)  # real expiry
    assert_problem(demo.gateway(issued["token"], "GET", "/demo/v1/orders/42"), 403, "token-expired")


def test_step_5_the_kill_switch_revokes_every_active_grant_of_a_principal(demo: Demo) -> None:
    grants = [demo.grant() for _ in range(2)]
    for _, token in grants:
        assert demo.gateway(token, "GET", "/demo/v1/x").status_code == 200
    done = demo.cli("admin", "revoke", "--principal", "alice", "--reason", "incident 8")
    count = re.match(r"revoked (\d+) grant\(s\)", done.stdout)
    assert count
    assert int(count[1]) >= 2
    for grant_id, token in grants:
        assert grant_id in done.stdout
        assert_problem(demo.gateway(token, "GET", "/demo/v1/x"), 403, "grant-revoked")
    active = demo.control("admin", "GET", "/v1/grants?active=true&principal=alice").json()
    assert active["items"] == []


EVENT_TYPES = {
    "request.created",
    "request.decided",
    "request.approved",
    "grant.issued",
    "grant.token_issued",
    "grant.revoked",
    "grant.released",
    "access.allowed",
    "access.denied",
}


def test_step_6_the_audit_trail_records_everything_and_verifies(demo: Demo) -> None:
    # Make sure every kind of event exists, whichever steps ran before.
    grant_id, token = demo.grant()
    demo.gateway(token, "GET", "/demo/v1/audit-me")
    write = demo.control(
        "alice",
        "POST",
        "/v1/requests",
        json={"api": "demo", "scopes": ["PUT /v1/x"], "duration": "5m", "reason": "audit"},
    ).json()
    approved = demo.control("bob", "POST", f"/v1/requests/{write['id']}/approve").json()
    demo.control("alice", "POST", f"/v1/grants/{approved['grant_id']}/revoke")
    demo.control("bob", "POST", f"/v1/grants/{grant_id}/revoke", json={"reason": "audit"})
    demo.gateway(token, "GET", "/demo/v1/audit-me")

    events = demo.cli.json("admin", "audit")
    assert {e["type"] for e in events} >= EVENT_TYPES, EVENT_TYPES - {e["type"] for e in events}
    mine = [e for e in events if e["grant"] == grant_id]
    assert [e["type"] for e in mine][-1] == "access.denied"
    assert mine[-1]["data"]["reason"] == "grant-revoked"
    verified = demo.cli("admin", "audit", "verify")
    assert verified.stdout.startswith("audit log intact: ")


def test_the_upstream_secret_never_appears_anywhere(demo: Demo) -> None:
    exported = demo.cli("admin", "audit", "export", "--format", "jsonl").stdout
    assert len(exported.splitlines()) > 10
    places = {
        "server output": demo.server.text(),
        "CLI output": "".join(demo.cli.transcript),
        "audit export": exported,
        "HTTP answers": "".join(r.text + json.dumps(dict(r.headers)) for r in demo.answers),
    }
    for where, text in places.items():
        assert DEMO_SECRET_PREFIX not in text, where
    assert DEMO_SECRET_PREFIX not in database_text(demo), "the secret is stored encrypted"


def database_text(demo: Demo) -> str:
    if demo.backend == "sqlite":
        return "".join(
            path.read_bytes().decode("latin-1")
            for path in demo.server.state_dir.glob("jitgate.db*")
        )
    import psycopg  # noqa: PLC0415

    with psycopg.connect(demo.database_url) as connection:
        tables = connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
        return "".join(
            repr(connection.execute(f'SELECT * FROM "{name}"').fetchall()) for (name,) in tables
        )


def test_a_restart_keeps_tokens_revocations_and_the_audit_chain(demo: Demo) -> None:
    if not demo.server.running:
        demo.server.start()
    tokens_file = demo.server.state_dir / "demo-tokens.json"
    tokens_before = tokens_file.read_text()
    live_id, live = demo.grant()
    dead_id, dead = demo.grant()
    demo.control("bob", "POST", f"/v1/grants/{dead_id}/revoke", json={"reason": "pre-restart"})
    checked = demo.control("admin", "GET", "/v1/audit/verify").json()["checked"]
    assert demo.gateway(live, "GET", "/demo/v1/just-before-stop").status_code == 200

    assert demo.server.stop() == 0, "SIGTERM is a clean shutdown"
    demo.server.start()

    assert tokens_file.read_text() == tokens_before, "working tokens are kept, not reissued"
    assert json.loads(demo.cli("alice", "whoami").stdout)["id"] == "alice"
    assert demo.gateway(live, "GET", "/demo/v1/after-restart").status_code == 200
    assert_problem(demo.gateway(dead, "GET", "/demo/v1/after-restart"), 403, "grant-revoked")
    assert demo.control("alice", "GET", f"/v1/grants/{dead_id}").json()["status"] == "revoked"
    assert demo.control("alice", "GET", f"/v1/grants/{live_id}").json()["status"] == "active"
    allowed = demo.control("admin", "GET", "/v1/audit?type=access.allowed&limit=1000").json()
    paths = {e["data"]["path"] for e in allowed["items"]}
    assert "/v1/just-before-stop" in paths, "access events queued at shutdown are not lost"
    verified = demo.cli("admin", "audit", "verify").stdout
    count = re.match(r"audit log intact: (\d+) events", verified)
    assert count
    assert int(count[1]) > checked


@dataclass
class Tampered:
    """``audit verify --database`` on the stopped instance's database and tampered copies."""

    events: int
    seq: int  # where the tampering struck (the first request.created)
    checkpoint: int  # the seq of the latest signed checkpoint
    verified: dict[str, subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def tampered(demo: Demo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tampered]:
    """Stop the server after a checkpoint; tamper with copies; verify them all at once."""
    if demo.server.running:
        demo.grant()  # at least one request, whatever ran before
        assert demo.control("admin", "POST", "/v1/audit/checkpoints").status_code == 200
        assert demo.server.stop() == 0
    events, checkpoint = tampering.read_events(demo.database_url)
    assert checkpoint is not None
    n = next(e.seq for e in events if e.type == "request.created")
    assert n + 2 < checkpoint
    cases = {
        "edit": (tampering.edit(events), n),
        "delete": (tampering.delete(events), n),
        "reorder": (tampering.reorder(events), n),
        "truncate": (tampering.truncate(events), checkpoint),
    }
    tmp_path = tmp_path_factory.mktemp(f"tampered-{demo.backend}")
    with contextlib.ExitStack() as stack:
        urls = {"untouched": demo.database_url}
        for name, (tamper, seq) in cases.items():
            urls[name] = stack.enter_context(tampering.database_copy(demo, tmp_path, name))
            tampering.apply(urls[name], tamper, seq)
        done = demo.cli.many([["audit", "verify", "--database", url] for url in urls.values()])
        yield Tampered(len(events), n, checkpoint, dict(zip(urls, done, strict=True)))


def assert_tampered(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.startswith("AUDIT LOG TAMPERED: "), result.stderr
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_an_untouched_stopped_database_verifies(tampered: Tampered) -> None:
    done = tampered.verified["untouched"]
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"audit log intact: {tampered.events} events")
    assert f"matches the signed checkpoint at seq {tampered.checkpoint}" in done.stdout


# The cleverer tamperings (rehashing, inserting, rewriting the tail) are checked in
# process, on both databases, by tests/cli/test_commands.py.
@pytest.mark.parametrize("case", ["edit", "delete", "reorder"])
def test_an_edited_deleted_or_reordered_event_is_named(tampered: Tampered, case: str) -> None:
    assert_tampered(tampered.verified[case], f"first bad event: seq {tampered.seq}: ")


def test_a_truncation_is_caught_by_the_signed_checkpoint(tampered: Tampered) -> None:
    assert_tampered(tampered.verified["truncate"], "truncated")
