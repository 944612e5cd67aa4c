"""The revocation table that one machine's gateway workers share with its control plane.

``jitgate up --workers N`` serves the control plane from the main process and the
gateway from N worker processes. The control plane's change feed is this table:
:meth:`RevocationTable.grant_ended` writes the grant into shared memory before it
returns, and every worker looks the grant up in it on every call, so a revocation is in
force in every worker when the revoke call returns, with no message to send and no
acknowledgement to wait for. API and key changes only bump a counter
(:attr:`RevocationTable.changes`) that tells the workers to reload from the database.

Guarantees:

* One writer: the process that created the table, its writes serialised by a lock.
  Workers only read, and take no lock: a lookup is a hash and a few memory reads.
* Visibility: the writer's stores are done when ``grant_ended`` returns; the revoke
  answer then reaches the caller, and the caller's next request reaches a worker, through
  system calls, which order memory, so that request's lookup sees the grant.
* Entries are keyed by the first 8 bytes of BLAKE2b of the grant id (0 means "empty").
  A collision can only make a live grant look revoked (fail closed); its odds are the
  number of live entries over 2**64.
* An entry is never removed from the table in use. When the table is half full,
  compaction copies the entries that still matter (grants not yet ``grace`` past their
  expiry) into the other table, then bumps ``epoch``, whose parity names the table in
  use; a reader that saw the epoch change while it probed looks again.
* Bounded: ``slots // 2`` live revocations. Past that, ``grant_ended`` raises
  :class:`TableFull` (the revocation is committed by then and reaches the workers by
  their resync from the database, within 250 ms).

Layout, little-endian: a header of five u64 (magic, slots, epoch, changes, reserved),
then two tables of ``slots`` entries of (key u64, expires f64), open addressing with
linear probing. The layout is private to this module; processes of one machine run the
same code, so it carries no version beyond the magic.
"""

from __future__ import annotations

import hashlib
import struct
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from multiprocessing.shared_memory import SharedMemory

from jitgate.clock import Clock

MAGIC = 0x6A67_7276_0001  # "jgrv", layout 1
DEFAULT_SLOTS = 1 << 18  # 4 MiB a table; 131,072 live revocations
_U64 = struct.Struct("<Q")
_HEADER = struct.Struct("<5Q")
_ENTRY = struct.Struct("<Qd")
_EPOCH = 2 * _U64.size
_CHANGES = 3 * _U64.size


class TableFull(RuntimeError):  # noqa: N818 - reads as the problem it names
    """More live revocations than the table holds."""


def grant_key(grant_id: str) -> int:
    key = int.from_bytes(hashlib.blake2b(grant_id.encode(), digest_size=8).digest(), "little")
    return key or 1


@dataclass(frozen=True, slots=True)
class TableHandle:
    """What a worker needs to open the table (picklable: it crosses the spawn)."""

    name: str


class RevocationTable:
    """See the module docstring. ``create`` in the writer, ``attach`` in the workers."""

    def __init__(self, shm: SharedMemory, clock: Clock | None, grace: timedelta) -> None:
        self._shm = shm
        assert shm.buf is not None, "mapped until close()"
        self._buf: memoryview = shm.buf
        magic, self._slots, *_ = _HEADER.unpack_from(self._buf, 0)
        if magic != MAGIC:
            raise ValueError(f"shared memory {shm.name} is not a revocation table")
        self._size = self._slots * _ENTRY.size
        self._clock = clock  # the writer's: compaction drops what has expired
        self._grace = grace.total_seconds()
        self._lock = threading.Lock()
        self._live = 0  # entries in the table in use (the writer's count)

    @classmethod
    def create(cls, clock: Clock, grace: timedelta, slots: int = DEFAULT_SLOTS) -> RevocationTable:
        if slots < 2 or slots & (slots - 1):
            raise ValueError("slots must be a power of two")
        shm = SharedMemory(create=True, size=_HEADER.size + 2 * slots * _ENTRY.size)
        assert shm.buf is not None, "just mapped"
        _HEADER.pack_into(shm.buf, 0, MAGIC, slots, 0, 0, 0)
        return cls(shm, clock, grace)

    @classmethod
    def attach(cls, handle: TableHandle) -> RevocationTable:
        return cls(SharedMemory(handle.name), None, timedelta(0))

    @property
    def handle(self) -> TableHandle:
        return TableHandle(self._shm.name)

    @property
    def changes(self) -> int:
        """Bumped by every API or key change: a worker that sees it move reloads."""
        return int(_U64.unpack_from(self._buf, _CHANGES)[0])

    # reading (any process, no lock) ---------------------------------------------------
    def __contains__(self, grant_id: str) -> bool:
        key = grant_key(grant_id)
        buf, unpack, mask = self._buf, _U64.unpack_from, self._slots - 1
        while True:
            epoch = unpack(buf, _EPOCH)[0]
            base = _HEADER.size + (epoch & 1) * self._size
            index, found = key & mask, False
            for _ in range(self._slots):
                seen = unpack(buf, base + index * _ENTRY.size)[0]
                if seen in (key, 0):
                    found = seen == key
                    break
                index = (index + 1) & mask
            if unpack(buf, _EPOCH)[0] == epoch:
                return found

    # the change feed (the writer only) -------------------------------------------------
    def grant_ended(self, grant_id: str, expires_at: datetime) -> None:
        key, expires = grant_key(grant_id), expires_at.timestamp()
        with self._lock:
            epoch = _U64.unpack_from(self._buf, _EPOCH)[0]
            if self._live >= self._slots // 2:
                epoch = self._compact(epoch)
                if self._live >= self._slots // 2:
                    raise TableFull(
                        f"the shared revocation table holds {self._live} live revocations,"
                        " its limit; the workers learn of this one from the database"
                    )
            if self._put(_HEADER.size + (epoch & 1) * self._size, key, expires):
                self._live += 1

    def apis_changed(self) -> None:
        self._bump_changes()

    def keys_changed(self) -> None:
        self._bump_changes()

    def _bump_changes(self) -> None:
        with self._lock:
            _U64.pack_into(self._buf, _CHANGES, self.changes + 1)

    def _put(self, base: int, key: int, expires: float) -> bool:
        """Write ``key`` into the table at ``base``; True if it was not there yet. The
        expiry is written before the key: a reader never meets a key without its entry."""
        buf, mask = self._buf, self._slots - 1
        index = key & mask
        while True:
            offset = base + index * _ENTRY.size
            seen, was = _ENTRY.unpack_from(buf, offset)
            if seen == key:
                _ENTRY.pack_into(buf, offset, key, max(was, expires))
                return False
            if seen == 0:
                struct.pack_into("<d", buf, offset + _U64.size, expires)
                _U64.pack_into(buf, offset, key)
                return True
            index = (index + 1) & mask

    def _compact(self, epoch: int) -> int:
        """Copy what still matters into the other table and switch to it; the new epoch."""
        assert self._clock is not None, "only the writer compacts"
        horizon = self._clock.timestamp() - self._grace
        old = _HEADER.size + (epoch & 1) * self._size
        new = _HEADER.size + ((epoch + 1) & 1) * self._size
        entries = list(_ENTRY.iter_unpack(self._buf[old : old + self._size]))
        self._buf[new : new + self._size] = bytes(self._size)
        self._live = 0
        for key, expires in entries:
            if key and expires > horizon:
                self._put(new, key, expires)
                self._live += 1
        _U64.pack_into(self._buf, _EPOCH, epoch + 1)
        return epoch + 1

    # lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        """Unmap the table; the writer also removes it."""
        self._shm.close()
        if self._clock is not None:
            self._shm.unlink()
