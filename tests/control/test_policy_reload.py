"""``POST /v1/policy/reload`` and ``GET /v1/policy``: the policy changes without a restart."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from jitgate.policy import load_policy
from jitgate.services.context import Context
from tests.control.conftest import Control, assert_problem, snapshot
from tests.control.test_meta import operations
from tests.services.test_policy_reload import BAD, BAD_SCOPE_LINE, READS, WRITES

RELOAD = "/v1/policy/reload"


@pytest.fixture
def policy_file(ctx: Context, tmp_path: Path) -> Path:
    """``ctx`` configured with a ``policy_file`` (reads only), in force."""
    path = tmp_path / "policy.yaml"
    path.write_text(READS)
    ctx.policy_file = path
    ctx.replace_policy(load_policy(path))
    return path


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def audit(control: Control, kind: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = control.ok("GET", f"/v1/audit?type={kind}", "admin")["items"]
    return items


def write_request(control: Control) -> dict[str, Any]:
    created = control.request(scope="POST /v1/orders")
    return {"status": created["status"], "version": created["decision"]["policy_version"]}


def test_an_admin_reloads_and_the_new_rule_decides(control: Control, policy_file: Path) -> None:
    old = digest(READS)
    assert write_request(control) == {"status": "denied", "version": old}
    policy_file.write_text(READS + WRITES)
    reloaded = control.ok("POST", RELOAD, "admin")
    new = digest(READS + WRITES)
    assert reloaded == {
        "digest": new,
        "previous_digest": old,
        "changed": True,
        "source": "policy.yaml",
        "loaded_at": reloaded["loaded_at"],
        "rules": ["reads", "writes-at-once"],
    }
    shown = control.ok("GET", "/v1/policy", "alice")
    assert (shown["digest"], shown["loaded_at"]) == (new, reloaded["loaded_at"])
    assert [r["name"] for r in shown["rules"]] == ["reads", "writes-at-once"]
    assert write_request(control) == {"status": "approved", "version": new}
    [loaded] = [e for e in audit(control, "policy.loaded") if e["data"]["digest"] == new]
    assert loaded["actor"] == "admin"
    assert (loaded["data"]["previous_digest"], loaded["data"]["trigger"]) == (old, "api")


def test_reloading_an_unchanged_file_records_nothing(control: Control, policy_file: Path) -> None:
    before = audit(control, "policy.*")
    reloaded = control.ok("POST", RELOAD, "admin")
    assert reloaded["changed"] is False
    assert reloaded["digest"] == reloaded["previous_digest"] == digest(READS)
    assert audit(control, "policy.*") == before


@pytest.mark.parametrize("who", ["alice", "bob", None])
def test_only_an_admin_may_reload(
    control: Control, ctx: Context, policy_file: Path, who: str | None
) -> None:
    policy_file.write_text(READS + WRITES)
    before = snapshot(ctx.store)
    response = control.post(RELOAD, who)
    if who is None:
        assert_problem(response, 401, "unauthenticated")
        return
    assert_problem(response, 403, "not-admin")
    assert ctx.policy.digest == digest(READS)
    assert snapshot(ctx.store) == before


def test_a_bad_policy_is_refused_naming_file_and_line_and_the_old_one_stays(
    control: Control, ctx: Context, policy_file: Path
) -> None:
    policy_file.write_text(BAD)
    body = assert_problem(control.post(RELOAD, "admin"), 422, "policy-rejected")
    assert f"{policy_file}:{BAD_SCOPE_LINE}: rules[0].scopes[0]" in body["detail"]
    assert "GTE" in body["detail"]
    assert control.ok("GET", "/v1/policy", "alice")["digest"] == digest(READS)
    assert write_request(control) == {"status": "denied", "version": digest(READS)}
    assert control.request()["status"] == "approved", "the old rules still decide"
    [rejected] = audit(control, "policy.rejected")
    assert rejected["actor"] == "admin"
    assert rejected["data"] == {
        "source": str(policy_file),
        "error": body["detail"],
        "digest_in_force": digest(READS),
        "trigger": "api",
    }
    assert audit(control, "policy.loaded") == []


def test_without_a_policy_file_reload_is_a_conflict(control: Control, ctx: Context) -> None:
    assert ctx.policy_file is None  # the demo policy, built in
    body = assert_problem(control.post(RELOAD, "admin"), 409, "no-policy-file")
    assert "policy_file" in body["detail"]


def test_get_policy_shows_digest_and_load_time(control: Control, ctx: Context) -> None:
    shown = control.ok("GET", "/v1/policy", "alice")
    assert shown["digest"] == ctx.policy.digest
    assert shown["loaded_at"] == ctx.policy_loaded_at.isoformat().replace("+00:00", "Z")


def test_openapi_lists_the_reload(control: Control) -> None:
    assert "POST /v1/policy/reload" in operations(control)
