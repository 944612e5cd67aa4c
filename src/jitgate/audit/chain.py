"""The hash chain that makes the audit log tamper-evident.

Each event's ``hash`` is ``sha256(prev_hash + "\\n" + canonical_json(body))`` where
``body`` is :func:`event_body`, and ``prev_hash`` is the previous event's ``hash``
(:data:`GENESIS_HASH` for event 1). So editing any field of any event, deleting,
reordering or inserting events breaks the chain at a point :class:`ChainVerifier`
names. What the chain alone cannot show is a rewrite of the whole tail (or a truncated
tail): signed checkpoints (:mod:`jitgate.audit.checkpoint`) cover that.

Canonical JSON (what is hashed) is part of the wire format and never changes:
keys sorted by code point, no whitespace, UTF-8 (not ``\\u`` escapes), no NaN or
Infinity, only JSON types (str keys; tuples become arrays). Numbers follow JSON's single
number type: a float with an integral value is written as an integer (``1.0`` as ``1``),
so a database that normalises numbers (PostgreSQL ``jsonb``) cannot change a hash.

Pure: no I/O and no clock; verification streams in O(1) memory.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from jitgate.audit.events import ChainedEvent, NewEvent, format_at
from jitgate.errors import InvalidInput, JitgateError

GENESIS_HASH: str = "0" * 64
CHAIN_VERSION = 1

_MAX_DEPTH = 64  # bounds recursion; audit data is shallow, a cycle is a bug
HASH_PATTERN = re.compile(r"[0-9a-f]{64}")


def canonical_json(value: Any) -> bytes:
    """The one byte string for ``value``; raise :class:`InvalidInput` if it is not JSON."""
    return _encode(_plain(value, "$", 0))


def _encode(plain: Any) -> bytes:
    """Canonical JSON of a value already made of plain JSON types (see :func:`_plain`)."""
    text = json.dumps(
        plain, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput("value contains a string that is not valid Unicode") from None


_CANONICAL = frozenset({str, int, bool, type(None)})  # exact types that are their own copy


def _plain(value: Any, path: str, depth: int) -> Any:
    """A copy of ``value`` made of plain JSON types only, in canonical number form."""
    if type(value) in _CANONICAL:
        return value
    if depth > _MAX_DEPTH:
        raise InvalidInput(f"{path}: nested deeper than {_MAX_DEPTH} levels")
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput(f"{path}: {value!r} is not a JSON number")
        return int(value) if value.is_integer() else float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidInput(f"{path}: key {key!r} is not a string")
            plain = item if type(item) in _CANONICAL else _plain(item, f"{path}.{key}", depth + 1)
            out[str(key)] = plain
        return out
    if isinstance(value, list | tuple):
        return [_plain(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    raise InvalidInput(f"{path}: {type(value).__name__} is not a JSON value")


# The body layout is append-only: a field may be added (with a new "v"), but no field
# is ever removed, renamed or given a different meaning, and "v": 1 bodies are hashed
# exactly like this forever. Key order does not matter (canonical JSON sorts keys).
def _body(
    *,
    seq: int,
    at: datetime,
    type: str,
    actor: str | None,
    principal: str | None,
    api: str | None,
    grant: str | None,
    request: str | None,
    data: Mapping[str, Any],
) -> dict[str, Any]:
    return {
        "v": CHAIN_VERSION,
        "seq": seq,
        "at": format_at(at),
        "type": str(type),
        "actor": actor,
        "principal": principal,
        "api": api,
        "grant": grant,
        "request": request,
        "data": _plain(data, "data", 0),
    }


def event_body(seq: int, event: NewEvent) -> dict[str, Any]:
    """What is hashed for ``event`` at position ``seq`` (layout is append-only, see above)."""
    return _body(
        seq=seq,
        at=event.at,
        type=event.type,
        actor=event.actor,
        principal=event.principal,
        api=event.api,
        grant=event.grant,
        request=event.request,
        data=event.data,
    )


def _digest(prev_hash: str, body: dict[str, Any]) -> str:
    """``body`` is plain already (:func:`_body` made its ``data`` so)."""
    try:
        prefix = prev_hash.encode("ascii")
    except UnicodeEncodeError:
        raise InvalidInput("prev_hash is not ASCII") from None
    return hashlib.sha256(prefix + b"\n" + _encode(body)).hexdigest()


def link(prev_hash: str, seq: int, event: NewEvent) -> ChainedEvent:
    """``event`` placed after the event whose hash is ``prev_hash``, as position ``seq``.

    The returned ``data`` is the canonical copy that was hashed (plain JSON types), which
    is what the storage layer must persist (:func:`data_json` encodes it).
    """
    if not HASH_PATTERN.fullmatch(prev_hash):
        raise InvalidInput("prev_hash must be 64 lower-case hex digits")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise InvalidInput(f"seq must be a positive integer, not {seq!r}")
    body = event_body(seq, event)
    return ChainedEvent(
        seq=seq,
        at=event.at,
        type=str(event.type),
        actor=event.actor,
        principal=event.principal,
        api=event.api,
        grant=event.grant,
        request=event.request,
        data=body["data"],
        prev_hash=prev_hash,
        hash=_digest(prev_hash, body),
    )


def data_json(event: ChainedEvent) -> str:
    """The stored text of a chained event's ``data``: its canonical JSON."""
    return _encode(event.data).decode()


def recompute_hash(e: ChainedEvent) -> str:
    """The hash ``e``'s stored fields imply; equals ``e.hash`` for an untouched event."""
    body = _body(
        seq=e.seq,
        at=e.at,
        type=e.type,
        actor=e.actor,
        principal=e.principal,
        api=e.api,
        grant=e.grant,
        request=e.request,
        data=e.data,
    )
    return _digest(e.prev_hash, body)


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of a verification.

    ``checked`` counts the events that passed; ``head_seq``/``head_hash`` are those of the
    last event that passed (the start point if none did). On failure, ``first_bad_seq`` is
    the position where the chain breaks: every event before it is intact.
    """

    ok: bool
    checked: int
    head_seq: int
    head_hash: str
    first_bad_seq: int | None = None
    problem: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ChainVerifier:
    """Checks events fed in ``seq`` order, keeping only the last hash (O(1) memory).

    Start at the genesis, or at a trusted point such as a verified checkpoint
    (``start_seq=cp.seq + 1, start_hash=cp.hash``).
    """

    def __init__(self, start_seq: int = 1, start_hash: str = GENESIS_HASH) -> None:
        if isinstance(start_seq, bool) or not isinstance(start_seq, int) or start_seq < 1:
            raise InvalidInput(f"start_seq must be a positive integer, not {start_seq!r}")
        if not HASH_PATTERN.fullmatch(start_hash):
            raise InvalidInput("start_hash must be 64 lower-case hex digits")
        self._start_seq = start_seq
        self._expected_seq = start_seq
        self._prev_hash = start_hash
        self._checked = 0
        self._bad_seq: int | None = None
        self._problem: str | None = None

    def feed(self, event: ChainedEvent) -> bool:
        """Check the next event; ``False`` once a problem is found (later events are ignored)."""
        if self._problem is not None:
            return False
        problem = self._check(event)
        if problem is not None:
            self._bad_seq = self._expected_seq
            self._problem = problem
            return False
        self._checked += 1
        self._expected_seq += 1
        self._prev_hash = event.hash
        return True

    def _check(self, event: ChainedEvent) -> str | None:
        n = event.seq
        if n != self._expected_seq:
            return f"event {n}: expected seq {self._expected_seq} (missing or reordered events)"
        if event.prev_hash != self._prev_hash:
            before = "the genesis hash" if n == 1 else f"event {n - 1}"
            return f"event {n}: prev_hash does not match {before}"
        try:
            actual = recompute_hash(event)
        except JitgateError as exc:
            return f"event {n}: hash does not match its contents ({exc.detail})"
        if actual != event.hash:
            return f"event {n}: hash does not match its contents"
        return None

    def result(self) -> VerifyResult:
        return VerifyResult(
            ok=self._problem is None,
            checked=self._checked,
            head_seq=self._expected_seq - 1,
            head_hash=self._prev_hash,
            first_bad_seq=self._bad_seq,
            problem=self._problem,
        )


def verify_events(events: Iterable[ChainedEvent]) -> VerifyResult:
    """Verify a whole chain from the genesis; stops reading at the first problem."""
    verifier = ChainVerifier()
    for event in events:
        if not verifier.feed(event):
            break
    return verifier.result()
