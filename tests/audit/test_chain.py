"""The hash chain: canonical JSON, linking, and detection of every kind of tampering."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitgate.audit.chain import (
    GENESIS_HASH,
    ChainVerifier,
    VerifyResult,
    canonical_json,
    event_body,
    link,
    recompute_hash,
    verify_events,
)
from jitgate.audit.events import ChainedEvent, EventType, NewEvent
from jitgate.errors import InvalidInput

T0 = datetime(2026, 1, 5, 10, 0, 0, tzinfo=UTC)

# -- strategies ---------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
# Events are cheaper to draw than arbitrary JSON, which keeps the chain tests fast; the
# canonical-JSON tests above cover the breadth of values.
event_data = st.dictionaries(
    st.sampled_from(["reason", "scopes", "n", "ok", "ratio", "é"]),
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
    | st.lists(st.text(max_size=4), max_size=2),
    max_size=3,
)
ids = st.none() | st.sampled_from(["alice", "bob", "system"]) | st.text(min_size=1, max_size=6)
timestamps = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))]),
)
new_events = st.builds(
    NewEvent,
    type=st.sampled_from(EventType),
    at=timestamps,
    actor=ids,
    principal=ids,
    api=ids,
    grant=ids,
    request=ids,
    data=event_data,
)
event_lists = st.lists(new_events, min_size=1, max_size=5)
pairs_or_more = st.lists(new_events, min_size=2, max_size=5)
FAST = settings(max_examples=30, deadline=None)


def build(events: list[NewEvent]) -> list[ChainedEvent]:
    chain: list[ChainedEvent] = []
    prev = GENESIS_HASH
    for seq, event in enumerate(events, start=1):
        chained = link(prev, seq, event)
        chain.append(chained)
        prev = chained.hash
    return chain


def failed(result: VerifyResult, seq: int, problem: str) -> bool:
    return (
        not result.ok
        and result.first_bad_seq == seq
        and result.problem == problem
        and result.checked == seq - 1
        and result.head_seq == seq - 1
    )


def ev(**overrides: Any) -> NewEvent:
    fields: dict[str, Any] = {"type": EventType.REQUEST_CREATED, "at": T0, "actor": "alice"}
    return NewEvent(**{**fields, **overrides})


# -- canonical JSON -----------------------------------------------------------------


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert canonical_json({"b": 1, "a": [1, "é", None, True]}) == (
        '{"a":[1,"é",null,true],"b":1}'.encode()
    )


def test_canonical_json_sorts_nested_keys_and_normalises_numbers() -> None:
    assert canonical_json({"z": {"y": 1.0, "x": -0.0}, "a": (1.5, 2)}) == (
        b'{"a":[1.5,2],"z":{"x":0,"y":1}}'
    )


@pytest.mark.parametrize(
    "bad",
    [
        float("nan"),
        float("inf"),
        {"a": float("-inf")},
        {1: "int key"},
        {"when": T0},
        {"s": {1, 2}},
        b"bytes",
        "\ud800",
    ],
)
def test_canonical_json_rejects_non_json(bad: Any) -> None:
    with pytest.raises(InvalidInput):
        canonical_json(bad)


def test_canonical_json_rejects_cycles() -> None:
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(InvalidInput, match="nested deeper"):
        canonical_json(cyclic)


@FAST
@given(json_objects, st.randoms(use_true_random=False))
def test_canonical_json_ignores_key_insertion_order(obj: dict[str, Any], rnd: Any) -> None:
    items = list(obj.items())
    rnd.shuffle(items)
    assert canonical_json(dict(items)) == canonical_json(obj)


# -- linking ------------------------------------------------------------------------


def test_event_body_layout() -> None:
    at = datetime(2026, 1, 5, 15, 30, 0, 7, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    body = event_body(3, ev(at=at, data={"k": 1}))
    assert body == {
        "v": 1,
        "seq": 3,
        "at": "2026-01-05T10:00:00.000007Z",
        "type": "request.created",
        "actor": "alice",
        "principal": None,
        "api": None,
        "grant": None,
        "request": None,
        "data": {"k": 1},
    }


def test_link_hash_is_sha256_of_prev_and_canonical_body() -> None:
    event = ev()
    chained = link(GENESIS_HASH, 1, event)
    expected = hashlib.sha256(
        GENESIS_HASH.encode() + b"\n" + canonical_json(event_body(1, event))
    ).hexdigest()
    assert chained.hash == expected
    assert chained.prev_hash == GENESIS_HASH
    assert chained.type == "request.created"


def test_link_stores_the_canonical_copy_of_data() -> None:
    data: dict[str, Any] = {"n": 2.0, "xs": (1, 2)}
    chained = link(GENESIS_HASH, 1, ev(data=data))
    data["n"] = 99
    assert chained.data == {"n": 2, "xs": [1, 2]}
    assert recompute_hash(chained) == chained.hash


@pytest.mark.parametrize(
    ("prev", "seq"), [("abc", 1), (GENESIS_HASH.upper().replace("0", "A"), 1), (GENESIS_HASH, 0)]
)
def test_link_rejects_bad_position(prev: str, seq: int) -> None:
    with pytest.raises(InvalidInput):
        link(prev, seq, ev())


def test_new_event_needs_timezone_and_known_type() -> None:
    with pytest.raises(InvalidInput, match="timezone"):
        ev(at=datetime(2026, 1, 5))
    with pytest.raises(InvalidInput, match="unknown"):
        ev(type="request.teleported")
    assert ev(type="grant.issued").type is EventType.GRANT_ISSUED


def test_recompute_is_stable_across_a_database_round_trip() -> None:
    chained = link(GENESIS_HASH, 1, ev(at=datetime(2026, 1, 5, 11, 0, 0, 123456, tzinfo=UTC)))
    # SQLite hands back naive UTC; PostgreSQL may hand back another offset.
    naive = dataclasses.replace(chained, at=chained.at.replace(tzinfo=None))
    shifted = dataclasses.replace(chained, at=chained.at.astimezone(timezone(timedelta(hours=-7))))
    assert recompute_hash(naive) == recompute_hash(shifted) == chained.hash


def test_as_dict_is_json_friendly() -> None:
    chained = link(GENESIS_HASH, 1, ev(data={"k": [1]}))
    d = chained.as_dict()
    assert d["at"] == "2026-01-05T10:00:00.000000Z"
    assert d["type"] == "request.created"
    canonical_json(d)  # does not raise


def test_event_type_wire_names_are_subject_action() -> None:
    for member in EventType:
        assert re.fullmatch(r"[a-z_]+\.[a-z_]+", member.value)
    assert len({m.value for m in EventType}) == len(EventType)


# -- verification: unit -------------------------------------------------------------


def test_empty_chain_is_ok() -> None:
    assert verify_events([]) == VerifyResult(ok=True, checked=0, head_seq=0, head_hash=GENESIS_HASH)


def test_untouched_chain_verifies() -> None:
    chain = build([ev(data={"i": i}) for i in range(5)])
    result = verify_events(chain)
    assert result == VerifyResult(ok=True, checked=5, head_seq=5, head_hash=chain[-1].hash)
    assert result.as_dict()["head_seq"] == 5


def test_first_event_must_link_to_genesis() -> None:
    forged = link("f" * 64, 1, ev())
    result = verify_events([forged])
    assert failed(result, 1, "event 1: prev_hash does not match the genesis hash")


def test_first_event_must_be_seq_one() -> None:
    result = verify_events(build([ev(), ev()])[1:])
    assert failed(result, 1, "event 2: expected seq 1 (missing or reordered events)")


def test_verifier_resumes_from_a_trusted_point() -> None:
    chain = build([ev(data={"i": i}) for i in range(6)])
    verifier = ChainVerifier(start_seq=4, start_hash=chain[2].hash)
    assert all(verifier.feed(e) for e in chain[3:])
    assert verifier.result() == VerifyResult(
        ok=True, checked=3, head_seq=6, head_hash=chain[-1].hash
    )
    wrong = ChainVerifier(start_seq=4, start_hash=chain[1].hash)
    assert not wrong.feed(chain[3])
    assert wrong.result().problem == "event 4: prev_hash does not match event 3"


def test_verifier_stops_at_the_first_problem() -> None:
    chain = build([ev(data={"i": i}) for i in range(4)])
    chain[1] = dataclasses.replace(chain[1], actor="mallory")
    verifier = ChainVerifier()
    assert [verifier.feed(e) for e in chain] == [True, False, False, False]
    assert failed(verifier.result(), 2, "event 2: hash does not match its contents")


def test_edited_seq_is_detected() -> None:
    chain = build([ev(data={"i": i}) for i in range(3)])
    chain[1] = dataclasses.replace(chain[1], seq=7)
    assert failed(verify_events(chain), 2, "event 7: expected seq 2 (missing or reordered events)")


def test_unhashable_stored_data_is_reported_not_raised() -> None:
    chain = build([ev()])
    chain[0] = dataclasses.replace(chain[0], data={"x": float("nan")})
    result = verify_events(chain)
    assert result.first_bad_seq == 1
    assert result.problem is not None
    assert result.problem.startswith("event 1: hash does not match its contents (")


@pytest.mark.parametrize(("start_seq", "start_hash"), [(0, GENESIS_HASH), (1, "xyz")])
def test_verifier_rejects_bad_start(start_seq: int, start_hash: str) -> None:
    with pytest.raises(InvalidInput):
        ChainVerifier(start_seq, start_hash)


# -- verification: any chain, any tampering -----------------------------------------

Draw = Callable[[st.SearchStrategy[Any]], Any]
Tamper = Callable[[ChainedEvent, Draw], ChainedEvent]


def _replace_id(name: str) -> Tamper:
    def tamper(e: ChainedEvent, draw: Draw) -> ChainedEvent:
        new = draw(ids.filter(lambda v: v != getattr(e, name)))
        return dataclasses.replace(e, **{name: new})

    return tamper


def _tamper_type(e: ChainedEvent, draw: Draw) -> ChainedEvent:
    return dataclasses.replace(
        e, type=draw(st.sampled_from(EventType).filter(lambda t: t != e.type))
    )


def _tamper_at(e: ChainedEvent, draw: Draw) -> ChainedEvent:
    delta = draw(st.integers(-(10**9), 10**9).filter(bool))
    return dataclasses.replace(e, at=e.at + timedelta(microseconds=delta))


def _tamper_data(e: ChainedEvent, draw: Draw) -> ChainedEvent:
    new = draw(event_data.filter(lambda d: canonical_json(d) != canonical_json(e.data)))
    return dataclasses.replace(e, data=new)


def _tamper_hash(e: ChainedEvent, draw: Draw) -> ChainedEvent:
    new = draw(st.text("0123456789abcdef", min_size=64, max_size=64).filter(lambda h: h != e.hash))
    return dataclasses.replace(e, hash=new)


CONTENT_TAMPERS: dict[str, Tamper] = {
    "type": _tamper_type,
    "at": _tamper_at,
    "data": _tamper_data,
    "hash": _tamper_hash,
    **{name: _replace_id(name) for name in ("actor", "principal", "api", "grant", "request")},
}


@FAST
@given(event_lists)
def test_any_untouched_chain_verifies(events: list[NewEvent]) -> None:
    chain = build(events)
    result = verify_events(chain)
    assert result == VerifyResult(
        ok=True, checked=len(chain), head_seq=len(chain), head_hash=chain[-1].hash
    )


@pytest.mark.parametrize("field_name", sorted(CONTENT_TAMPERS))
@settings(max_examples=10, deadline=None)
@given(events=event_lists, data=st.data())
def test_editing_any_field_of_any_event_is_detected(
    field_name: str, events: list[NewEvent], data: st.DataObject
) -> None:
    chain = build(events)
    i = data.draw(st.integers(0, len(chain) - 1))
    chain[i] = CONTENT_TAMPERS[field_name](chain[i], data.draw)
    assert failed(verify_events(chain), i + 1, f"event {i + 1}: hash does not match its contents")


@FAST
@given(event_lists, st.data())
def test_editing_prev_hash_is_detected(events: list[NewEvent], data: st.DataObject) -> None:
    chain = build(events)
    i = data.draw(st.integers(0, len(chain) - 1))
    chain[i] = dataclasses.replace(chain[i], prev_hash=chain[i].hash)
    before = "the genesis hash" if i == 0 else f"event {i}"
    assert failed(verify_events(chain), i + 1, f"event {i + 1}: prev_hash does not match {before}")


@FAST
@given(pairs_or_more, st.data())
def test_editing_and_rehashing_an_event_breaks_the_next_link(
    events: list[NewEvent], data: st.DataObject
) -> None:
    chain = build(events)
    i = data.draw(st.integers(0, len(chain) - 2))
    edited = dataclasses.replace(chain[i], actor="mallory", data={"forged": True})
    chain[i] = dataclasses.replace(edited, hash=recompute_hash(edited))
    n = i + 2
    assert failed(verify_events(chain), n, f"event {n}: prev_hash does not match event {n - 1}")


@FAST
@given(pairs_or_more, st.data())
def test_deleting_any_event_but_the_last_is_detected(
    events: list[NewEvent], data: st.DataObject
) -> None:
    chain = build(events)
    i = data.draw(st.integers(0, len(chain) - 2))
    del chain[i]
    seq = i + 1
    problem = f"event {seq + 1}: expected seq {seq} (missing or reordered events)"
    assert failed(verify_events(chain), seq, problem)


@FAST
@given(pairs_or_more, st.data())
def test_deleting_and_renumbering_is_detected(events: list[NewEvent], data: st.DataObject) -> None:
    chain = build(events)
    i = data.draw(st.integers(0, len(chain) - 2))
    del chain[i]
    chain[i:] = [dataclasses.replace(e, seq=e.seq - 1) for e in chain[i:]]
    seq = i + 1
    before = "the genesis hash" if seq == 1 else f"event {seq - 1}"
    assert failed(verify_events(chain), seq, f"event {seq}: prev_hash does not match {before}")


@FAST
@given(event_lists)
def test_deleting_the_last_event_leaves_a_shorter_valid_chain(events: list[NewEvent]) -> None:
    # The chain alone cannot see a truncated tail; checkpoints do (test_checkpoint.py).
    chain = build(events)[:-1]
    assert verify_events(chain).ok


@FAST
@given(pairs_or_more, st.data())
def test_swapping_adjacent_events_is_detected(events: list[NewEvent], data: st.DataObject) -> None:
    chain = build(events)
    i = data.draw(st.integers(0, len(chain) - 2))
    chain[i], chain[i + 1] = chain[i + 1], chain[i]
    seq = i + 1
    problem = f"event {seq + 1}: expected seq {seq} (missing or reordered events)"
    assert failed(verify_events(chain), seq, problem)


@FAST
@given(pairs_or_more, st.data())
def test_swapping_seq_numbers_of_adjacent_events_is_detected(
    events: list[NewEvent], data: st.DataObject
) -> None:
    # How a reorder looks when rows are read back ORDER BY seq.
    chain = build(events)
    i = data.draw(st.integers(0, len(chain) - 2))
    a, b = chain[i], chain[i + 1]
    chain[i], chain[i + 1] = (
        dataclasses.replace(b, seq=a.seq),
        dataclasses.replace(a, seq=b.seq),
    )
    seq = i + 1
    result = verify_events(chain)
    assert result.first_bad_seq == seq
    assert result.problem in {
        f"event {seq}: prev_hash does not match "
        + ("the genesis hash" if seq == 1 else f"event {seq - 1}"),
        f"event {seq}: hash does not match its contents",
    }


@FAST
@given(event_lists, new_events, st.data())
def test_inserting_a_forged_event_is_detected(
    events: list[NewEvent], forged_event: NewEvent, data: st.DataObject
) -> None:
    chain = build(events)
    i = data.draw(st.integers(0, len(chain) - 1))
    # The forger links it perfectly to its predecessor and computes its own hash...
    forged = link(chain[i].prev_hash, chain[i].seq, forged_event)
    renumber = data.draw(st.booleans())
    rest = [dataclasses.replace(e, seq=e.seq + 1) for e in chain[i:]] if renumber else chain[i:]
    tampered = [*chain[:i], forged, *rest]
    # ...so the break shows at the event after it.
    seq = i + 2
    problem = (
        f"event {seq}: prev_hash does not match event {seq - 1}"
        if renumber
        else f"event {seq - 1}: expected seq {seq} (missing or reordered events)"
    )
    assert failed(verify_events(tampered), seq, problem)


@FAST
@given(event_lists, new_events, st.data())
def test_inserting_a_forged_event_and_rehashing_the_next_is_detected(
    events: list[NewEvent], forged_event: NewEvent, data: st.DataObject
) -> None:
    chain = build(events)
    i = data.draw(st.integers(0, len(chain) - 1))
    forged = link(chain[i].prev_hash, chain[i].seq, forged_event)
    rest = [dataclasses.replace(e, seq=e.seq + 1) for e in chain[i:]]
    rest[0] = dataclasses.replace(rest[0], hash=recompute_hash(rest[0]))
    seq = i + 2
    problem = f"event {seq}: prev_hash does not match event {seq - 1}"
    assert failed(verify_events([*chain[:i], forged, *rest]), seq, problem)
