"""Per-grant usage limits at the gateway: a lifetime call quota and a rate limit.

:class:`UsageMeter` is the interface the enforcer calls (``view.usage.admit``); two
implementations, named for what backs them, share one copy of the limit arithmetic
(:func:`_charge`):

* :class:`LocalUsageMeter`: process memory, for a gateway that runs in one process
  (``jitgate up``, ``--workers 1``, tests that build a view directly).
* :class:`SharedUsageMeter`: a table in shared memory that every worker of one gateway
  (``--workers N``) counts in. :class:`~jitgate.workers.WorkerPool` creates it in the
  main process before it spawns a worker, and hands it to each worker (a replacement
  too) as a :class:`UsageHandle`.

Guarantees (for the processes that share one meter: one gateway process, or all the
workers of one ``jitgate up``/``serve gateway --workers N``):

* A call is counted only when every other check has admitted it, and counting is the
  last check: a refused call never uses up quota.
* ``max_calls``: the grant's admitted calls never exceed its quota, whichever worker the
  calls land on and however they race: the check and the count are one step under a
  lock. The count starts from the calls the audit log already holds for the grant
  (``seed``), read once per meter, so a restarted gateway does not hand out a fresh quota
  and a replaced worker does not reset or double the count (the shared table lives in the
  main process; only the first worker to start seeds it).
* ``rate``: a token bucket of ``calls`` tokens refilled at ``calls`` per ``seconds``, for
  the grant as a whole: a burst of at most ``calls`` and, over any stretch of ``T``
  seconds, at most ``calls + T * rate``.
* Time is the ``now`` the enforcer checks ``exp`` with (the gateway clock's POSIX
  timestamp; the wall clock is one clock for every process of a machine). Calls that
  read the clock in one order and reach the lock in another add no tokens; a wall clock
  stepped back by more than ``CLOCK_STEP`` restarts refilling from the new time (no
  tokens are added for the step); one stepped forward adds at most a full burst.
* Bounded: an entry is kept until ``GRACE`` past the expiry of the grant's tokens (the
  most clock-skew leeway a token can get), then reclaimed: the local meter by ``prune``;
  the shared table when it fills up and an entry has expired (it compacts, at most once
  per ``COMPACT_EVERY``).
* Fail closed: a grant with limits that the shared table has no room for is refused
  (429 ``usage-table-full``), never admitted uncounted. A table that cannot hold the
  seed stops the worker's start-up (:class:`UsageTableFull`). A grant without limits is
  never refused here, and costs two attribute reads: no hash, no lock.

Not covered: several gateway machines (or several ``serve gateway`` processes started
separately) count separately, each seeded from the audit log when it starts, so a quota
can be overshot by what the others admitted since; the docs say so.

The shared table's lock is a POSIX record lock (``fcntl.lockf``) on the table's file,
with a thread lock in front of it (record locks do not exclude the threads of one
process). The kernel releases a record lock when its process dies, SIGKILL included, so
a worker killed while it holds the lock does not wedge the others. (POSIX also releases
it when the process closes any descriptor of the file: a process closes its descriptors
of the table only in :meth:`SharedUsageMeter.close`.) Entries are keyed by 128 bits of
BLAKE2b of the grant id; two grants colliding would share one count and one bucket
(their odds are the number of live entries squared over 2**129).

Layout, little-endian, in an anonymous file (``memfd``) mapped by every process: a
header of eight 8-byte fields (magic, slots, epoch, used of table 0, used of table 1,
seeded, compacted_at f64, soonest f64: no entry expires before it), then two tables of
``slots`` entries of (key u64, check u64, expires f64, calls u64, tokens f64,
refilled_at f64), open addressing with linear probing; key 0 means empty. Compaction
copies the live entries into the other table and then flips ``epoch``, whose parity
names the table in use, and a new entry's key is written after the rest of it: a worker
killed at any point leaves a consistent table. The layout is private to this module; the
processes that share it run the same code, so it carries no version beyond the magic.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import reduction
from multiprocessing.context import get_spawning_popen
from typing import NamedTuple, Protocol

from jitgate.config import MAX_CLOCK_SKEW
from jitgate.tokens.grant_token import GrantClaims

Refusal = tuple[str, str]  # (reason code, detail)

GRACE = MAX_CLOCK_SKEW.total_seconds()  # an entry outlives its tokens' exp by this much
CLOCK_STEP = 1.0  # seconds back in time that is a step of the wall clock, not a race
COMPACT_EVERY = 1.0  # seconds between compactions of a full shared table
DEFAULT_SLOTS = 1 << 16  # 3 MiB a table; 49,152 grants with limits in use at once
TABLE_FULL: Refusal = (
    "usage-table-full",
    "the gateway has no room to count this grant's calls right now; denied",
)

MAGIC = 0x6A67_7573_0001  # "jgus", layout 1
_HEADER = struct.Struct("<6Qdd")
_ENTRY = struct.Struct("<QQdQdd")
_KEYS = struct.Struct("<QQ")
_U64 = struct.Struct("<Q")
_F64 = struct.Struct("<d")
_TAIL = struct.Struct("<QdQdd")  # an entry after its key: written before the key
_STATE = struct.Struct("<dQdd")  # an entry after its key and check: what a call changes
_EPOCH, _USED, _SEEDED, _COMPACTED, _SOONEST = 16, 24, 40, 48, 56


class Seen(NamedTuple):
    """What the audit log says of a grant with a quota when the meter is seeded."""

    calls: int  # calls admitted so far
    expires: float  # the grant's expiry (POSIX seconds)


@dataclass(slots=True)
class _Use:
    calls: int
    tokens: float  # inf: a full bucket, whatever the rate
    refilled_at: float
    expires: float


def _charge(use: _Use, claims: GrantClaims, now: float) -> Refusal | None:
    """Count one call of ``claims``' grant into ``use`` at ``now``; None when admitted,
    else why not. The one copy of the limit arithmetic."""
    use.expires = max(use.expires, claims.expires)
    if claims.max_calls is not None and use.calls >= claims.max_calls:
        return "quota-exhausted", f"the grant's {claims.max_calls} calls are used up"
    if claims.rate is not None:
        calls, seconds = claims.rate
        elapsed = now - use.refilled_at
        if elapsed >= 0.0 or -elapsed > CLOCK_STEP:
            use.refilled_at = now  # (a step back: refill from here on, with nothing added)
        use.tokens = min(float(calls), use.tokens + max(elapsed, 0.0) * calls / seconds)
        if use.tokens < 1.0:
            return "rate-limited", f"the grant allows {calls} calls per {seconds:g} s"
        use.tokens -= 1.0
    use.calls += 1
    return None


class UsageMeter(ABC):
    """Counts the calls of grants with limits; see the module docstring."""

    def admit(self, claims: GrantClaims, now: float) -> Refusal | None:
        """Count one call of ``claims``' grant at ``now`` (the gateway clock's POSIX
        timestamp); None when admitted, else ``(reason, detail)``."""
        if claims.max_calls is None and claims.rate is None:
            return None
        return self._admit(claims, now)

    @abstractmethod
    def _admit(self, claims: GrantClaims, now: float) -> Refusal | None: ...

    @property
    @abstractmethod
    def needs_seed(self) -> bool:
        """Not yet seeded: the caller reads the audit log and calls :meth:`seed`."""

    @abstractmethod
    def seed(self, seen: Mapping[str, Seen]) -> None:
        """Calls already admitted per grant (from the audit log); only the first seed of a
        meter counts."""

    def prune(self, now_epoch: float) -> None:  # noqa: B027 - optional: the shared table reclaims itself
        """Forget grants whose tokens have expired (``now_epoch``: POSIX seconds)."""

    def close(self) -> None:  # noqa: B027 - optional: only the shared table holds a mapping
        """Release what the meter holds."""


class LocalUsageMeter(UsageMeter):
    """Counts in this process's memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._uses: dict[str, _Use] = {}
        self._seed: dict[str, int] = {}
        self._seeded = False

    @property
    def needs_seed(self) -> bool:
        return not self._seeded

    def seed(self, seen: Mapping[str, Seen]) -> None:
        with self._lock:
            if not self._seeded:
                self._seed = {grant_id: s.calls for grant_id, s in seen.items()}
                self._seeded = True

    def _admit(self, claims: GrantClaims, now: float) -> Refusal | None:
        with self._lock:
            use = self._uses.get(claims.grant_id)
            if use is None:
                calls = self._seed.pop(claims.grant_id, 0)
                use = self._uses[claims.grant_id] = _Use(calls, float("inf"), now, claims.expires)
            return _charge(use, claims, now)

    def prune(self, now_epoch: float) -> None:
        with self._lock:
            horizon = now_epoch - GRACE
            for grant_id in [g for g, use in self._uses.items() if use.expires <= horizon]:
                del self._uses[grant_id]


class UsageTableFull(RuntimeError):  # noqa: N818 - reads as the problem it names
    """More grants to seed than the shared usage table holds."""


class _Detachable(Protocol):
    def detach(self) -> int: ...


@dataclass(frozen=True, slots=True)
class UsageHandle:
    """What a worker needs to map the shared table: its file descriptor, duplicated into
    the worker when the worker is spawned (it crosses a spawn only: the table has no name
    to open, so nothing is left behind when the processes end)."""

    fd: int

    def __reduce__(self) -> tuple[Callable[[_Detachable], UsageHandle], tuple[_Detachable]]:
        if get_spawning_popen() is None:
            raise TypeError("a usage table handle only crosses a process spawn")
        return _received, (reduction.DupFd(self.fd),)


def _received(dup: _Detachable) -> UsageHandle:
    return UsageHandle(dup.detach())


def grant_key(grant_id: str) -> tuple[int, int]:
    """The entry key (never 0) and check of a grant id."""
    digest = hashlib.blake2b(grant_id.encode(), digest_size=16).digest()
    return int.from_bytes(digest[:8], "little") or 1, int.from_bytes(digest[8:], "little")


class SharedUsageMeter(UsageMeter):
    """Counts in a table shared by the processes of one gateway; ``create`` in the main
    process, ``attach`` in each worker."""

    def __init__(self, fd: int, table: mmap.mmap) -> None:
        magic, slots, *_ = _HEADER.unpack_from(table, 0)
        if magic != MAGIC:
            raise ValueError("the shared memory is not a usage table")
        self._slots = int(slots)
        self._fd = fd
        self._mm = table
        self._size = self._slots * _ENTRY.size
        self._limit = self._slots * 3 // 4  # linear probing stays short below this load
        self._lock = threading.Lock()

    @classmethod
    def create(cls, slots: int = DEFAULT_SLOTS) -> SharedUsageMeter:
        if slots < 4 or slots & (slots - 1):
            raise ValueError("slots must be a power of two, at least 4")
        fd = _anonymous_file(_HEADER.size + 2 * slots * _ENTRY.size)
        table = mmap.mmap(fd, 0)
        _HEADER.pack_into(table, 0, MAGIC, slots, 0, 0, 0, 0, float("-inf"), float("inf"))
        return cls(fd, table)

    @classmethod
    def attach(cls, handle: UsageHandle) -> SharedUsageMeter:
        return cls(handle.fd, mmap.mmap(handle.fd, 0))

    @property
    def handle(self) -> UsageHandle:
        return UsageHandle(self._fd)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)

    # counting -------------------------------------------------------------------------
    def _admit(self, claims: GrantClaims, now: float) -> Refusal | None:
        key, check = grant_key(claims.grant_id)
        table, fd = self._mm, self._fd
        with self._lock:  # as _locked(), written out: this is every limited call's path
            fcntl.lockf(fd, fcntl.LOCK_EX)
            try:
                offset = self._entry(key, check, claims.expires, now)
                if offset is None:
                    return TABLE_FULL
                _, _, expires, calls, tokens, refilled_at = _ENTRY.unpack_from(table, offset)
                use = _Use(calls, tokens, refilled_at, expires)
                refused = _charge(use, claims, now)
                _STATE.pack_into(
                    table, offset + _KEYS.size, use.expires, use.calls, use.tokens, use.refilled_at
                )
                return refused
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN)

    def _entry(self, key: int, check: int, expires: float, now: float) -> int | None:
        """The grant's entry, made if new; None when there is no room for it."""
        for compacted in (False, True):
            epoch = self._u64(_EPOCH)
            offset, found = self._probe(self._base(epoch), key, check)
            if found:
                return offset
            if offset is not None and self._u64(_USED + 8 * (epoch & 1)) < self._limit:
                self._insert(epoch, offset, key, check, _Use(0, float("inf"), now, expires))
                return offset
            if compacted or not self._compact(now):
                return None
        return None

    # seeding --------------------------------------------------------------------------
    @property
    def needs_seed(self) -> bool:
        return self._u64(_SEEDED) == 0

    def seed(self, seen: Mapping[str, Seen]) -> None:
        with self._locked():
            if self._u64(_SEEDED):
                return  # another worker did, before anything was counted
            epoch = self._u64(_EPOCH)
            for grant_id, (calls, expires) in seen.items():
                key, check = grant_key(grant_id)
                offset, found = self._probe(self._base(epoch), key, check)
                if offset is None or (
                    not found and self._u64(_USED + 8 * (epoch & 1)) >= self._limit
                ):
                    raise UsageTableFull(
                        f"{len(seen)} grants with a quota have calls in the audit log; the"
                        f" shared usage table holds {self._limit}"
                    )
                if found:  # a collision: the two grants share the larger count
                    _U64.pack_into(self._mm, offset + 24, max(calls, self._u64(offset + 24)))
                else:  # with a full bucket (refilled from time 0)
                    self._insert(epoch, offset, key, check, _Use(calls, float("inf"), 0.0, expires))
            _U64.pack_into(self._mm, _SEEDED, 1)

    # the table (under the lock) -------------------------------------------------------
    def _u64(self, offset: int) -> int:
        return int(_U64.unpack_from(self._mm, offset)[0])

    def _base(self, epoch: int) -> int:
        return _HEADER.size + (epoch & 1) * self._size

    def _probe(self, base: int, key: int, check: int) -> tuple[int | None, bool]:
        """The entry of ``key`` (True), else the empty slot where it goes (False), else
        None (no empty slot: never below the load limit)."""
        table, mask = self._mm, self._slots - 1
        index = key & mask
        for _ in range(self._slots):
            offset = base + index * _ENTRY.size
            seen, seen_check = _KEYS.unpack_from(table, offset)
            if seen == 0:
                return offset, False
            if seen == key and seen_check == check:
                return offset, True
            index = (index + 1) & mask
        return None, False

    def _insert(self, epoch: int, offset: int, key: int, check: int, use: _Use) -> None:
        table = self._mm
        _TAIL.pack_into(
            table, offset + 8, check, use.expires, use.calls, use.tokens, use.refilled_at
        )
        _U64.pack_into(table, offset, key)  # last: the entry exists once it is whole
        used = _USED + 8 * (epoch & 1)
        _U64.pack_into(table, used, self._u64(used) + 1)
        soonest = _F64.unpack_from(table, _SOONEST)[0]
        _F64.pack_into(table, _SOONEST, min(soonest, use.expires))

    def _compact(self, now: float) -> bool:
        """Copy the entries of grants not yet ``GRACE`` past their expiry into the other
        table and switch to it; False if none has expired, or the last compaction was too
        recent (it takes tens of milliseconds when the table is full of live entries)."""
        table = self._mm
        horizon = now - GRACE
        if _F64.unpack_from(table, _SOONEST)[0] > horizon:
            return False
        if 0.0 <= now - _F64.unpack_from(table, _COMPACTED)[0] < COMPACT_EVERY:
            return False
        epoch = self._u64(_EPOCH)
        old, new = self._base(epoch), self._base(epoch + 1)
        table[new : new + self._size] = bytes(self._size)
        live, soonest = 0, float("inf")
        for entry in _ENTRY.iter_unpack(table[old : old + self._size]):
            if entry[0] and entry[2] > horizon:
                offset, _ = self._probe(new, entry[0], entry[1])
                assert offset is not None, "the new table holds every entry of the old"
                _ENTRY.pack_into(table, offset, *entry)
                live, soonest = live + 1, min(soonest, entry[2])
        _U64.pack_into(table, _USED + 8 * ((epoch + 1) & 1), live)
        _F64.pack_into(table, _COMPACTED, now)
        _U64.pack_into(table, _EPOCH, epoch + 1)  # the switch
        # After the switch: a process killed just before it leaves a value too low (one
        # compaction too many), never too high (a table that looks full when it is not).
        _F64.pack_into(table, _SOONEST, soonest)
        return True

    # lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        """Unmap the table and close this process's descriptor (the table goes when the
        last process that holds it does)."""
        if not self._mm.closed:
            self._mm.close()
            os.close(self._fd)


def _anonymous_file(size: int) -> int:
    """A file descriptor of ``size`` zero bytes in memory, with no name."""
    if hasattr(os, "memfd_create"):  # Linux
        fd = os.memfd_create("jitgate-usage")
    else:
        with tempfile.TemporaryFile() as f:
            fd = os.dup(f.fileno())
    os.ftruncate(fd, size)
    return fd
