"""``POST /v1/policy/replay``: a candidate policy re-decides the history, read-only."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from jitgate.clock import FrozenClock
from jitgate.services import access, directory, replay
from jitgate.services.context import Context
from tests.control.conftest import Control, assert_problem, snapshot
from tests.control.test_meta import operations

REPLAY = "/v1/policy/replay"

# Under the demo policy, and then under this candidate, the history below gives one
# request per change class and one unchanged request.
CANDIDATE = """\
version: 1
rules:
  - name: reads-need-approval
    requesters: {groups: [engineering]}
    apis: [demo]
    scopes: ["GET /**"]
    max_duration: 15m
    approval: {count: 1, from: {groups: [approvers]}}
  - name: posts-at-once
    requesters: {groups: [engineering]}
    apis: [demo]
    scopes: ["POST /**"]
    max_duration: 1h
    approval: auto
  - name: demo-writes-need-approval
    requesters: {groups: [engineering]}
    apis: [demo]
    scopes: ["POST,PUT,PATCH,DELETE /**"]
    max_duration: 1h
    approval: {count: 1, from: {groups: [approvers]}}
"""
BAD_CANDIDATE = CANDIDATE.replace('["POST /**"]', '["POST /v1/**/x"]')
BAD_LINE = 12


def file_history(ctx: Context, clock: FrozenClock) -> dict[str, str]:
    """Requests filed under the policy in force (the demo's), a minute apart; their ids
    by what the candidate makes of them. One more, two days earlier, is ``old``."""
    alice = directory.get_principal(ctx, "alice")
    bob = directory.get_principal(ctx, "bob")

    def file(who: Any, scope: str, duration: str) -> access.RequestView:
        clock.advance(timedelta(minutes=1))
        return access.create_request(
            ctx, who, api="demo", scopes=[scope], duration=duration, reason="replay test"
        )

    old = file(alice, "GET /v1/old", "10m")
    clock.advance(timedelta(days=2))
    needs_approval = file(alice, "GET /v1/items", "10m")  # approved -> needs approval
    rule_changed = file(alice, "GET /v1/items", "30m")  # denied (too long), by another rule
    auto = file(alice, "POST /v1/orders", "30m")  # pending -> approved at once
    denied = file(bob, "GET /v1/items", "10m")  # approved (low risk) -> no rule
    unchanged = file(alice, "DELETE /v1/orders/1", "10m")  # pending, same rule and steps
    clock.advance(timedelta(minutes=1))
    grant = needs_approval.grant
    assert grant is not None
    extension = access.extend(ctx, alice, grant.id, duration="5m", reason="more")
    assert (old.request.status.value, rule_changed.request.status.value) == ("approved", "denied")
    assert (auto.request.status.value, denied.request.status.value) == ("pending", "approved")
    return {
        "old": old.request.id,
        "newly_needs_approval": needs_approval.request.id,
        "rule_changed": rule_changed.request.id,
        "newly_auto_approved": auto.request.id,
        "newly_denied": denied.request.id,
        "unchanged": unchanged.request.id,
        "extension": extension.request.id,
    }


def replay_ok(control: Control, **body: Any) -> Any:
    return control.ok("POST", REPLAY, "admin", json={"policy": CANDIDATE, **body})


def test_replay_classifies_each_change(control: Control, ctx: Context, clock: FrozenClock) -> None:
    ids = file_history(ctx, clock)
    before = snapshot(ctx.store)
    result = replay_ok(control, since="1d", source="new.yaml")
    assert snapshot(ctx.store) == before, "a replay writes nothing"
    assert result["candidate"]["source"] == "new.yaml"
    assert result["candidate"]["rules"] == 3
    assert (result["examined"], result["truncated"], result["limit"]) == (6, False, 10_000)
    assert result["unchanged"] == 1
    assert result["skipped"] == {"extension": 1, "requester_gone": 0, "api_gone": 0}
    assert result["counts"] == {
        "newly_auto_approved": 1,
        "newly_denied": 1,
        "newly_needs_approval": 1,
        "rule_changed": 1,
    }
    by_id = {c["request"]: c for c in result["changes"]}
    assert {c["change"]: c["request"] for c in result["changes"]} == {
        kind: ids[kind]
        for kind in ("newly_auto_approved", "newly_denied", "newly_needs_approval", "rule_changed")
    }
    auto = by_id[ids["newly_auto_approved"]]
    assert (auto["requester"], auto["api"], auto["scopes"]) == (
        "alice",
        "demo",
        ["POST /v1/orders"],
    )
    assert auto["old"]["outcome"] == "needs_approval"
    assert auto["old"]["rule"] == "demo-writes-need-approval"
    assert (auto["new"]["outcome"], auto["new"]["rule"]) == ("approve", "posts-at-once")
    assert auto["new"]["reasons"] == ["rule posts-at-once approves automatically"]
    changed = by_id[ids["rule_changed"]]
    assert (changed["old"]["outcome"], changed["new"]["outcome"]) == ("deny", "deny")
    assert (changed["old"]["rule"], changed["new"]["rule"]) == (
        "demo-read-self-service",
        "reads-need-approval",
    )
    assert by_id[ids["newly_denied"]]["new"]["rule"] is None
    assert by_id[ids["newly_needs_approval"]]["new"]["approvals_required"] == 1


def test_recent_denials_count_as_of_each_request(
    control: Control, ctx: Context, clock: FrozenClock
) -> None:
    ids = file_history(ctx, clock)
    changes = {c["request"]: c for c in replay_ok(control, since="1d")["changes"]}

    def factors(kind: str) -> dict[str, int]:
        risk = changes[ids[kind]]["new"]["risk"]
        return {f["name"]: f["points"] for f in risk["factors"]}

    # alice's 30m read was denied between these two of her requests.
    assert "recent_denials" not in factors("newly_needs_approval")
    assert factors("newly_auto_approved")["recent_denials"] == 10


def test_since_bounds_the_history(control: Control, ctx: Context, clock: FrozenClock) -> None:
    file_history(ctx, clock)
    assert replay_ok(control, since="30d")["examined"] == 7
    assert replay_ok(control, since=30)["examined"] == 1  # the extension, filed just now


def test_a_long_history_is_truncated_to_the_latest(
    control: Control, ctx: Context, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = file_history(ctx, clock)
    monkeypatch.setattr(replay, "MAX_EXAMINED", 3)
    result = replay_ok(control)
    assert (result["examined"], result["truncated"]) == (3, True)
    # The latest three: denied (bob), unchanged and the extension (skipped).
    assert {c["request"] for c in result["changes"]} == {ids["newly_denied"]}
    assert result["unchanged"] == 1
    assert result["skipped"]["extension"] == 1


@pytest.mark.parametrize("who", ["alice", "bob"])
def test_only_an_admin_may_replay(control: Control, who: str) -> None:
    response = control.post(REPLAY, who, json={"policy": CANDIDATE})
    assert_problem(response, 403, "not-admin")
    assert_problem(control.post(REPLAY, json={"policy": CANDIDATE}), 401)


def test_a_bad_candidate_is_a_422_naming_its_line(control: Control) -> None:
    response = control.post(REPLAY, "admin", json={"policy": BAD_CANDIDATE, "source": "new.yaml"})
    body = assert_problem(response, 422, "policy-invalid")
    assert body["detail"].startswith(f"new.yaml:{BAD_LINE}: rules[1].scopes[0]: "), body


@pytest.mark.parametrize(
    "body",
    [
        {"policy": CANDIDATE, "since": "forever"},
        {"policy": CANDIDATE, "since": 0},
        {"policy": CANDIDATE, "since": True},
        {"policy": CANDIDATE, "since": "400d"},
        {"policy": "version: 1\nrules: []\n", "colour": "blue"},
        {"policy": 42},
        {},
        {"policy": "- just\n- a list\n"},
        {"policy": ""},
    ],
)
def test_bad_input_is_a_4xx_problem(control: Control, body: dict[str, Any]) -> None:
    response = control.post(REPLAY, "admin", json=body)
    assert_problem(response, 422)


def test_openapi_lists_the_replay_route(control: Control) -> None:
    assert "POST /v1/policy/replay" in operations(control)
