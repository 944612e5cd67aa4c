"""The audit log over HTTP: query with filters and a cursor, and verification."""

from __future__ import annotations

from sqlalchemy import text

from jitgate.services.context import Context
from tests.control.conftest import Control


def test_audit_pages_with_a_cursor_and_filters(control: Control) -> None:
    for _ in range(3):
        control.grant()
    everything = control.ok("GET", "/v1/audit?limit=1000", "admin")["items"]
    seqs = [e["seq"] for e in everything]
    assert seqs == sorted(seqs)
    page, after, walked = None, 0, []
    while page is None or page["next_after"] is not None:
        page = control.ok("GET", f"/v1/audit?limit=4&after={after}", "admin")
        walked += page["items"]
        after = page["next_after"] or after
    assert [e["seq"] for e in walked] == seqs
    issued = control.ok("GET", "/v1/audit?type=grant.issued", "admin")["items"]
    assert len(issued) == 3
    assert {e["actor"] for e in issued} == {"policy"}
    grants = control.ok("GET", "/v1/audit?type=grant.*&principal=alice", "admin")["items"]
    assert {e["type"] for e in grants} == {"grant.issued"}
    one = issued[0]["grant"]
    assert [e["grant"] for e in control.ok("GET", f"/v1/audit?grant={one}", "admin")["items"]] == [
        one
    ]
    for event in everything:
        assert set(event) >= {"seq", "at", "type", "actor", "data", "prev_hash", "hash"}


def test_verify_reports_an_intact_log_and_names_the_first_edited_event(
    control: Control, ctx: Context
) -> None:
    control.grant()
    intact = control.ok("GET", "/v1/audit/verify", "admin")
    assert intact["ok"] is True
    assert intact["first_bad_seq"] is None
    with ctx.store.transaction() as tx:
        seq = tx.connection.execute(
            text("SELECT min(seq) FROM audit_events WHERE type = 'grant.issued'")
        ).scalar_one()
        tx.connection.execute(
            text("UPDATE audit_events SET actor = 'mallory' WHERE seq = :seq"), {"seq": seq}
        )
    broken = control.ok("GET", "/v1/audit/verify", "admin")
    assert broken["ok"] is False
    assert broken["first_bad_seq"] == seq


def test_verify_holds_the_log_against_its_signed_checkpoint(control: Control, ctx: Context) -> None:
    control.grant()
    checkpoint = control.ok("POST", "/v1/audit/checkpoints", "admin")["checkpoint"]
    assert control.ok("GET", "/v1/audit/verify", "admin")["checkpoint"]["seq"] == checkpoint["seq"]
    with ctx.store.transaction() as tx:  # cut the log back to before the checkpoint
        tx.connection.execute(
            text("DELETE FROM audit_events WHERE seq >= :seq"), {"seq": checkpoint["seq"]}
        )
    report = control.ok("GET", "/v1/audit/verify", "admin")
    assert report["ok"] is False
    assert "truncated" in (report["checkpoint_problem"] or "")
