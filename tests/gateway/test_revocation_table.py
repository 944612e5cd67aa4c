"""The shared revocation table: what the writer puts in, every reader sees at once."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitgate.clock import FrozenClock
from jitgate.gateway.revocations import RevocationTable, TableFull, TableHandle
from jitgate.gateway.view import GatewayView
from jitgate.secrets import SecretBox
from jitgate.storage.store import Store

GRACE = timedelta(seconds=5)


@pytest.fixture
def table(clock: FrozenClock) -> Iterator[RevocationTable]:
    created = RevocationTable.create(clock, GRACE, slots=64)
    yield created
    created.close()


def _lookup(handle: TableHandle, ids: list[str]) -> list[bool]:
    reader = RevocationTable.attach(handle)
    try:
        return [gid in reader for gid in ids]
    finally:
        reader.close()


def test_a_grant_is_in_the_table_when_grant_ended_returns(
    table: RevocationTable, clock: FrozenClock
) -> None:
    reader = RevocationTable.attach(table.handle)
    try:
        assert "grt_a" not in reader
        table.grant_ended("grt_a", clock.now() + timedelta(minutes=5))
        assert "grt_a" in reader
        assert "grt_b" not in reader
    finally:
        reader.close()


def test_another_process_sees_the_table(table: RevocationTable, clock: FrozenClock) -> None:
    table.grant_ended("grt_seen", clock.now() + timedelta(minutes=5))
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        found = pool.apply(_lookup, (table.handle, ["grt_seen", "grt_other"]))
    assert found == [True, False]


def test_compaction_keeps_live_revocations_and_drops_expired_ones(
    table: RevocationTable, clock: FrozenClock
) -> None:
    soon, later = clock.now() + timedelta(minutes=1), clock.now() + timedelta(hours=1)
    for i in range(16):
        table.grant_ended(f"grt_short_{i}", soon)
        table.grant_ended(f"grt_long_{i}", later)
    clock.advance(timedelta(minutes=1) + GRACE + timedelta(seconds=1))
    table.grant_ended("grt_new", later)  # the table is half full: this one compacts it
    assert all(f"grt_long_{i}" in table for i in range(16))
    assert "grt_new" in table
    assert not any(f"grt_short_{i}" in table for i in range(16))


def test_a_grant_within_grace_of_its_expiry_survives_compaction(
    table: RevocationTable, clock: FrozenClock
) -> None:
    table.grant_ended("grt_edge", clock.now() + timedelta(minutes=1))
    for i in range(31):
        table.grant_ended(f"grt_long_{i}", clock.now() + timedelta(hours=1))
    clock.advance(timedelta(minutes=1) + GRACE - timedelta(seconds=1))
    with pytest.raises(TableFull):  # nothing to drop yet: grt_edge is still refused
        table.grant_ended("grt_more", clock.now() + timedelta(hours=1))
    assert "grt_edge" in table
    assert "grt_more" not in table


def test_the_same_grant_twice_takes_one_entry(table: RevocationTable, clock: FrozenClock) -> None:
    for _ in range(100):
        table.grant_ended("grt_again", clock.now() + timedelta(hours=1))
    for i in range(31):
        table.grant_ended(f"grt_{i}", clock.now() + timedelta(hours=1))
    assert "grt_again" in table


def test_api_and_key_changes_move_the_counter(table: RevocationTable) -> None:
    reader = RevocationTable.attach(table.handle)
    try:
        assert reader.changes == 0
        table.apis_changed()
        table.keys_changed()
        assert reader.changes == 2
    finally:
        reader.close()


def test_only_a_power_of_two_of_slots(clock: FrozenClock) -> None:
    with pytest.raises(ValueError, match="power of two"):
        RevocationTable.create(clock, GRACE, slots=100)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(st.text(min_size=1, max_size=24), st.integers(min_value=1, max_value=600)),
        max_size=200,
    ),
    st.integers(min_value=0, max_value=600),
)
def test_the_table_answers_as_a_set_of_unexpired_revocations(
    ended: list[tuple[str, int]], elapsed: int
) -> None:
    clock = FrozenClock()
    start = clock.now()
    table = RevocationTable.create(clock, GRACE, slots=1024)
    try:
        for gid, lifetime in ended:
            table.grant_ended(gid, start + timedelta(seconds=lifetime))
        clock.advance(elapsed)
        horizon = start + timedelta(seconds=elapsed) - GRACE
        for i in range(400):  # forces compactions; none may lose what still matters
            table.grant_ended(f"grt_filler_{i}", clock.now())
            clock.advance(1)
        for gid, lifetime in ended:
            if start + timedelta(seconds=lifetime) > horizon + timedelta(seconds=400):
                assert gid in table, gid
    finally:
        table.close()


def test_a_worker_view_refuses_what_the_shared_table_holds(
    store: Store, box: SecretBox, clock: FrozenClock, table: RevocationTable
) -> None:
    view = GatewayView(store, box, clock, max_staleness=2.0, shared=table)
    assert not view.is_ended("grt_x")
    table.grant_ended("grt_x", clock.now() + timedelta(minutes=5))
    assert view.is_ended("grt_x")  # no resync: straight from shared memory
