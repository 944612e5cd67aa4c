"""``jitgate notifications [--dead]``: the outbox from the command line."""

from __future__ import annotations

import json
from datetime import timedelta

from jitgate.clock import FrozenClock
from jitgate.storage.outbox_repo import (
    Channel,
    Notification,
    NotificationStatus,
    Priority,
)
from jitgate.storage.store import Store
from tests.cli import conftest as cli_harness
from tests.cli.conftest import Cli, one_line_error

# The CLI tests' fixtures: jitgate as a demo principal against the in-process control plane.
cli = cli_harness.cli
_clean_environment = cli_harness._clean_environment


def _row(store: Store, clock: FrozenClock, nid: str, status: NotificationStatus) -> None:
    with store.transaction() as tx:
        tx.outbox.add(
            Notification(
                id=nid,
                channel=Channel.WEBHOOK,
                target="ops",
                event_type="grant.issued",
                priority=Priority.HIGH,
                payload={"version": 1},
                status=status,
                attempts=3,
                next_attempt_at=clock.now(),
                created_at=clock.now() + timedelta(seconds=len(nid)),
                last_error="HTTP 500: down" if status is NotificationStatus.DEAD else None,
            )
        )


def test_administrators_list_notifications_and_dead_letters(
    cli: Cli, store: Store, clock: FrozenClock
) -> None:
    _row(store, clock, "ntf_dead", NotificationStatus.DEAD)
    _row(store, clock, "ntf_delivered", NotificationStatus.DELIVERED)

    everything = json.loads(cli.ok("admin", "notifications", "-o", "json"))
    assert [n["id"] for n in everything] == ["ntf_delivered", "ntf_dead"]
    [dead] = json.loads(cli.ok("admin", "notifications", "--dead", "-o", "json"))
    assert (dead["id"], dead["last_error"], dead["priority"]) == (
        "ntf_dead",
        "HTTP 500: down",
        "high",
    )
    table = cli.ok("admin", "notifications", "--dead")
    assert "ntf_dead" in table
    assert "ntf_delivered" not in table

    assert "[not-admin]" in one_line_error(cli("bob", "notifications"))
