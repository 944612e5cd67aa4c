"""The CLI side of approval workflows: reusing a covering grant, Idempotency-Key with a
retry, approving the terms shown (optionally narrower), extend, review."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest

from jitgate.cli import output
from jitgate.clock import FrozenClock
from jitgate.policy import parse_policy
from jitgate.services import access, directory
from jitgate.services.context import Context
from tests.cli.conftest import Cli, one_line_error

POLICY = """\
version: 1
defaults: {max_duration: 1h, pending_ttl: 24h}
rules:
  - name: reads
    requesters: {groups: [engineering]}
    apis: [demo]
    scopes: ["GET /**"]
    max_duration: 1h
    approval: auto
    extensions: {max: 1, min_elapsed: 50%}
  - name: writes
    requesters: {groups: [engineering]}
    apis: [demo]
    scopes: ["POST,PUT,PATCH,DELETE /**"]
    max_duration: 1h
    approval: {steps: [{name: owners, count: 2, from: {groups: [approvers]}}]}
  - name: break-glass
    requesters: {groups: [engineering]}
    apis: [demo]
    scopes: ["* /**"]
    max_duration: 1h
    approval: break_glass
"""

READ = ("demo", "--scope", "GET /v1/**", "--reason", "debug order 42")


@pytest.fixture
def jg(cli: Cli, ctx: Context) -> Cli:
    ctx.replace_policy(parse_policy(POLICY, "approval-surface.yaml"))
    return cli


def as_json(out: str) -> Any:
    return json.loads(out)


def requests_filed(jg: Cli) -> int:
    return len(as_json(jg.ok("admin", "requests", "-o", "json")))


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables 200 columns wide, so that no cell folds (CliRunner's terminal has 80)."""
    monkeypatch.setattr(output.console, "_width", 200)


def grant_of(jg: Cli, grant_id: str) -> dict[str, Any]:
    [found] = [g for g in as_json(jg.ok("admin", "grants", "-o", "json")) if g["id"] == grant_id]
    return found


Send = Callable[..., httpx.Response]


def intercept(monkeypatch: pytest.MonkeyPatch, wrap: Callable[[Send], Send]) -> None:
    """Put ``wrap`` around the CLI's HTTP calls (already routed to the test server)."""
    monkeypatch.setattr(httpx, "request", wrap(httpx.request))


# Reuse -------------------------------------------------------------------------------------


def test_request_reuses_an_active_grant_that_covers_it(jg: Cli) -> None:
    first = as_json(jg.ok("alice", "request", *READ, "--for", "10m", "-o", "json"))
    grant_id = first["grant_id"]

    narrower = ("demo", "--scope", "GET /v1/orders/*", "--reason", "again")
    reused = jg("alice", "request", *narrower, "--for", "30m")
    assert reused.exit_code == 0, reused.stderr
    assert f"reusing grant {grant_id} (expires in 10m)" in reused.stderr
    assert reused.stdout.strip() == f"grant {grant_id}: get a token with 'jitgate token {grant_id}'"
    as_data = as_json(jg.ok("alice", "request", *narrower, "--for", "5m", "-o", "json"))
    assert (as_data["reused"], as_data["grant_id"]) == (True, grant_id)
    waited = jg("alice", "request", *narrower, "--for", "5m", "--wait")
    assert waited.exit_code == 0
    [token] = waited.stdout.split()
    assert token.startswith("eyJ")
    assert requests_filed(jg) == 1

    assert as_json(jg.ok("alice", "request", *READ, "--for", "10m", "--new", "-o", "json"))[
        "grant_id"
    ] not in (None, grant_id)
    assert requests_filed(jg) == 2


def test_a_grant_is_not_reused_when_it_is_too_narrow_or_too_short(
    jg: Cli, clock: FrozenClock
) -> None:
    grant_id = as_json(jg.ok("alice", "request", *READ, "--for", "10m", "-o", "json"))["grant_id"]
    wider = as_json(
        jg.ok("alice", "request", "demo", "-s", "GET /**", "-r", "x", "--for", "5m", "-o", "json")
    )
    assert wider.get("reused") is None
    assert wider["grant_id"] != grant_id

    clock.advance(timedelta(minutes=7))  # the first grant has 3m left; the wider one ended
    short = jg("alice", "request", *READ, "--for", "10m", "-o", "json")
    assert "reusing" not in short.stderr, "3m left is under min(10m, 5m)"
    brief = jg("alice", "request", *READ, "--for", "2m", "-o", "json")
    assert "reusing grant" in brief.stderr, "3m left covers a 2m request"


def test_exec_reuses_a_grant_and_leaves_it_alone(jg: Cli) -> None:
    grant_id = as_json(jg.ok("alice", "request", *READ, "--for", "10m", "-o", "json"))["grant_id"]
    check = 'test "${JITGATE_TOKEN#eyJ}" != ""'
    result = jg("alice", "exec", *READ, "--for", "5m", "--", "sh", "-c", check)
    assert result.exit_code == 0, result.stderr
    assert f"reusing grant {grant_id}" in result.stderr
    assert "released" not in result.stderr
    assert grant_of(jg, grant_id)["status"] == "active"
    assert requests_filed(jg) == 1

    fresh = jg("alice", "exec", *READ, "--for", "5m", "--new", "--", "true")
    assert fresh.exit_code == 0, fresh.stderr
    assert "reusing" not in fresh.stderr
    assert "released" in fresh.stderr
    assert grant_of(jg, grant_id)["status"] == "active"
    assert requests_filed(jg) == 2


# Idempotency-Key ---------------------------------------------------------------------------


def test_a_lost_answer_is_retried_with_the_same_key_and_files_once(
    jg: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys: list[str] = []

    def wrap(send: Send) -> Send:
        def lossy(method: str, url: str, **kwargs: Any) -> httpx.Response:
            response = send(method, url, **kwargs)
            if method == "POST" and url.endswith("/v1/requests"):
                keys.append(kwargs["headers"]["Idempotency-Key"])
                if len(keys) == 1:
                    raise httpx.ReadTimeout("the answer was lost")
            return response

        return lossy

    intercept(monkeypatch, wrap)
    created = as_json(jg.ok("alice", "request", *READ, "--for", "10m", "--new", "-o", "json"))
    assert created["status"] == "approved"
    assert len(keys) == 2
    assert keys[0] == keys[1]
    assert len(keys[0]) >= 16
    assert requests_filed(jg) == 1
    jg.ok("alice", "request", *READ, "--for", "10m", "--new", "-o", "json")
    assert len(set(keys)) == 2, "one key per invocation"


# Approve -----------------------------------------------------------------------------------


def pending_write(jg: Cli) -> dict[str, Any]:
    created = as_json(
        jg.ok("alice", "request", "demo", "-s", "POST /v1/orders/**", "--for", "30m",
              "-r", "fix order 42", "-o", "json")
    )  # fmt: skip
    assert created["status"] == "pending"
    return created


@pytest.mark.usefixtures("wide")
def test_approve_shows_the_terms_narrows_and_reports_progress(jg: Cli) -> None:
    created = pending_write(jg)
    listed = jg.ok("bob", "requests", "--pending")
    assert "2 approval(s) from approvers" in listed

    out = jg.ok("bob", "approve", created["id"], "-s", "POST /v1/orders/42", "--for", "10m")
    lines = out.splitlines()
    assert lines[0].startswith(f"approving {created['id']} (pending): alice on demo")
    assert "  reason: fix order 42" in lines
    assert "  scope: POST /v1/orders/**" in lines
    assert "narrowing to:" in lines
    assert "  scope: POST /v1/orders/42" in lines
    assert lines[-1] == (
        f"request {created['id']}: pending (1/2 approvals; needs 2 approval(s) from approvers)"
    )

    shown = jg.ok("carol", "approve", created["id"])
    assert "as narrowed by an earlier approver" in shown
    assert "  for: 10m" in shown
    assert f"request {created['id']}: approved (grant grt_" in shown.splitlines()[-1]
    [grant] = as_json(jg.ok("alice", "grants", "--active", "-o", "json"))
    assert grant["scopes"] == ["POST /v1/orders/42"]


def test_approve_refuses_to_widen(jg: Cli) -> None:
    created = pending_write(jg)
    wider = jg("bob", "approve", created["id"], "-s", "POST /v1/**")
    assert wider.exit_code == 1
    assert "[approval-widens]" in one_line_error(wider)
    longer = jg("bob", "approve", created["id"], "--for", "1h")
    assert "[approval-widens]" in one_line_error(longer)


def test_approve_is_bound_to_the_terms_it_showed(
    jg: Cli, ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone narrows the request between bob's look and bob's approval: refused."""
    created = pending_write(jg)
    carol = directory.get_principal(ctx, "carol")

    def wrap(send: Send) -> Send:
        def racing(method: str, url: str, **kwargs: Any) -> httpx.Response:
            if method == "POST" and url.endswith("/approve"):
                access.approve(ctx, carol, created["id"], duration="5m")
            return send(method, url, **kwargs)

        return racing

    intercept(monkeypatch, wrap)
    result = jg("bob", "approve", created["id"])
    assert result.exit_code == 1
    assert "[request-changed]" in one_line_error(result)
    assert "  for: 30m" in result.stdout, "what bob saw"


# Extend and review ---------------------------------------------------------------------------


@pytest.mark.usefixtures("wide")
def test_extend_is_denied_early_and_continues_the_grant_later(jg: Cli, clock: FrozenClock) -> None:
    grant_id = as_json(jg.ok("alice", "request", *READ, "--for", "20m", "-o", "json"))["grant_id"]
    early = jg("alice", "extend", grant_id, "--for", "20m", "-r", "still debugging")
    assert early.exit_code == 1
    assert ": denied (rule reads" in early.stdout
    assert "50%" in early.stdout

    clock.advance(timedelta(minutes=10))
    out = jg.ok("alice", "extend", grant_id, "--for", "20m", "-r", "still debugging", "--wait")
    assert ": approved (rule reads" in out
    follow = out.splitlines()[-1]
    assert f"continues {grant_id} from 2026-01-05T10:20:00Z until 2026-01-05T10:40:00Z" in follow
    widened = jg("alice", "extend", grant_id, "--for", "5m", "-r", "x", "-s", "GET /**")
    assert "[extension-widens]" in one_line_error(widened)
    [scheduled] = [g for g in as_json(jg.ok("alice", "grants", "-o", "json")) if g["extends"]]
    assert scheduled["status"] == "scheduled"
    assert f"extends {grant_id}" in jg.ok("alice", "grants")


@pytest.mark.usefixtures("wide")
def test_review_of_a_break_glass_grant(jg: Cli) -> None:
    created = as_json(
        jg.ok("alice", "request", "demo", "-s", "OPTIONS /v1/x", "--for", "10m", "-r", "outage",
              "-o", "json")
    )  # fmt: skip
    grant_id = created["grant_id"]
    flagged = as_json(jg.ok("bob", "grants", "--needs-review", "-o", "json"))
    assert [g["id"] for g in flagged] == [grant_id]
    assert "needs review" in jg.ok("bob", "grants", "--needs-review")

    own = jg("alice", "review", grant_id)
    assert own.exit_code == 1
    assert "[self-review]" in one_line_error(own)
    assert jg.ok("bob", "review", grant_id, "-m", "ok").strip() == (
        f"grant {grant_id}: reviewed by bob"
    )
    assert "[already-reviewed]" in one_line_error(jg("admin", "review", grant_id))
    assert as_json(jg.ok("bob", "grants", "--needs-review", "-o", "json")) == []
    assert "reviewed by bob" in jg.ok("bob", "grants")
