"""The gateway's in-memory view of what enforcement needs; no database per call.

It holds the upstream APIs (with their decrypted secrets), the public keys of grant
tokens, and the set of grants ended early (revoked or released) whose tokens are still
in date. It implements the services' change feed, so in one process a revocation is in
force as soon as the service announces it. In a gateway worker of ``jitgate up --workers
N``, ``shared`` is the control plane's revocation table
(:mod:`jitgate.gateway.revocations`), consulted on every call as well: it holds a
revocation before the revoke call returns. :meth:`GatewayView.resync` reloads everything
from the database (at start, and periodically for changes made by other processes).
``fresh`` is false once a resync is overdue by ``max_staleness``: callers
then fail closed.
"""

from __future__ import annotations

import base64
import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import quote, quote_plus

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from jitgate.clock import Clock
from jitgate.config import MAX_CLOCK_SKEW
from jitgate.domain.masks import Mask, parse_masks
from jitgate.domain.models import Api, InjectionKind
from jitgate.gateway.revocations import RevocationTable
from jitgate.gateway.usage import LocalUsageMeter, Seen, UsageMeter
from jitgate.secrets import Secret, SecretBox
from jitgate.storage.directory_repo import StoredKey
from jitgate.storage.store import Store, Tx

log = logging.getLogger(__name__)

# An ended grant is remembered this long past its expiry: its tokens are accepted up to
# the clock-skew allowance (at most 5 s) after ``exp``, and must stay refused meanwhile.
ENDED_GRACE = MAX_CLOCK_SKEW
# A resync reads the grants ended since the previous one, from this long before it began:
# a revocation committed late, or stamped by a clock up to MAX_CLOCK_SKEW slower, is seen.
ENDED_OVERLAP = 2 * MAX_CLOCK_SKEW
PRUNE_EVERY = 60.0  # seconds between drops of revocations whose tokens have expired


@dataclass(frozen=True, slots=True)
class Upstream:
    """An API as the gateway uses it, with the credential ready to inject."""

    api: Api
    secret: Secret
    header_name: str | None  # lower-case header to set, or None for query injection
    header_value: str = field(repr=False)  # holds the secret: never in a repr
    query_name: str | None
    # Every spelling of the secret that the gateway puts on the wire or that an upstream
    # may echo back (raw, percent-encoded, inside the basic-auth value), longest first:
    # what is scrubbed from response headers.
    spellings: tuple[str, ...] = field(repr=False, default=())
    masks: tuple[Mask, ...] = ()  # the API's response masks, parsed once

    @classmethod
    def build(cls, api: Api, secret: Secret) -> Upstream:
        inj = api.injection
        value = secret.reveal()
        forms = {value, quote(value, safe=""), quote(value), quote_plus(value)}
        masks = parse_masks(api.masks)
        if inj.kind is InjectionKind.HEADER:
            header = inj.template.replace("{secret}", value)
            return cls(api, secret, inj.name.lower(), header, None, _longest_first(forms), masks)
        if inj.kind is InjectionKind.BASIC:
            basic = base64.b64encode(f"{inj.username}:{value}".encode()).decode()
            spellings = _longest_first({*forms, basic})
            return cls(api, secret, "authorization", f"Basic {basic}", None, spellings, masks)
        return cls(api, secret, None, "", inj.name, _longest_first(forms), masks)


def _longest_first(forms: set[str]) -> tuple[str, ...]:
    return tuple(sorted((f for f in forms if f), key=len, reverse=True))


class GatewayView:
    """What the gateway enforces against, in memory; see the module docstring."""

    def __init__(
        self,
        store: Store,
        box: SecretBox,
        clock: Clock,
        *,
        max_staleness: float,
        shared: RevocationTable | None = None,
        usage: UsageMeter | None = None,
    ) -> None:
        self._store = store
        self._box = box
        self._clock = clock
        self._max_staleness = max_staleness
        self._lock = threading.Lock()
        self.upstreams: dict[str, Upstream] = {}
        self.public_keys: dict[str, Ed25519PublicKey] = {}
        self.ended: dict[str, float] = {}  # grant id -> its expiry (POSIX seconds)
        self._synced_at = float("-inf")
        self._ended_read_at: datetime | None = None  # wall time of the last ended-grants read
        self._pruned_at = float("-inf")  # monotonic time of the last drop of expired entries
        self._generation = 0  # bumped by every reload the feed asks for
        # Per-grant call counts and rate buckets: this process's own, or in a gateway
        # worker the table all the workers of its gateway count in.
        self.usage = usage if usage is not None else LocalUsageMeter()
        self.shared = shared  # the control plane's revocations, in a worker process

    # what enforcement asks ----------------------------------------------------
    def is_ended(self, grant_id: str) -> bool:
        return grant_id in self.ended or (self.shared is not None and grant_id in self.shared)

    @property
    def fresh(self) -> bool:
        # Monotonic: a wall clock stepped backwards must not make an old view look fresh.
        return self._clock.monotonic() - self._synced_at <= self._max_staleness

    # the change feed (under the lock: a concurrent resync must not undo a change) -------
    def grant_ended(self, grant_id: str, expires_at: datetime) -> None:
        with self._lock:
            self.ended[grant_id] = expires_at.timestamp()

    def apis_changed(self) -> None:
        with self._lock:
            self._load_apis()
            self._generation += 1

    def keys_changed(self) -> None:
        with self._lock:
            self._load_keys()
            self._generation += 1

    # loading --------------------------------------------------------------------
    def _load_apis(self) -> None:
        with self._store.read() as tx:
            rows = tx.directory.apis_with_secrets()
        self.upstreams = self._upstreams(rows)

    def _upstreams(self, rows: list[tuple[Api, bytes]]) -> dict[str, Upstream]:
        return {
            api.name: Upstream.build(api, self._box.decrypt_secret(blob, f"api:{api.name}"))
            for api, blob in rows
        }

    def _load_keys(self) -> None:
        with self._store.read() as tx:
            keys = tx.directory.list_keys()
        self.public_keys = self._live_keys(keys)

    def _live_keys(self, keys: list[StoredKey]) -> dict[str, Ed25519PublicKey]:
        now = self._clock.now()
        return {
            k.kid: Ed25519PublicKey.from_public_bytes(k.public_key)
            for k in keys
            if k.keep_until is None or k.keep_until > now
        }

    def resync(self) -> None:
        """Reload everything; on failure keep the old view and let it go stale.

        The database is read without the lock (announcements are not held up by it); the
        merge takes the lock, keeps every grant the feed ended meanwhile, and does not
        replace APIs or keys that the feed reloaded after this read began.
        """
        with self._lock:
            generation = self._generation
        started = self._clock.monotonic()
        first = self._synced_at == float("-inf")
        read_at = self._clock.now()
        since = self._ended_read_at  # None: the first read, of every grant ended early
        with self._store.read() as tx:
            # Incremental: a view of 100,000 revocations must not be re-read 4 times a second.
            ended = tx.access.ended_unexpired(
                read_at - ENDED_GRACE, since=None if since is None else since - ENDED_OVERLAP
            )
            keys = tx.directory.list_keys()
            rows = tx.directory.apis_with_secrets()
            # A quota survives a restart: count what was already admitted. Once per meter:
            # a shared one is seeded by the first worker, not again by the others.
            if first and self.usage.needs_seed:
                self.usage.seed(_usage_seen(tx, self._clock.now()))
        public_keys, upstreams = self._live_keys(keys), self._upstreams(rows)
        horizon = self._clock.timestamp() - ENDED_GRACE.total_seconds()
        with self._lock:
            if generation == self._generation:
                self.public_keys, self.upstreams = public_keys, upstreams
            # Only what ended since the last read: no work per known revocation.
            self.ended.update((gid, exp.timestamp()) for gid, exp in ended)
            if started - self._pruned_at >= PRUNE_EVERY:  # bounded: drop the expired
                self.ended = {g: e for g, e in self.ended.items() if e > horizon}
                self._pruned_at = started
            self._synced_at = started
            self._ended_read_at = read_at
        self.usage.prune(self._clock.timestamp())


def _usage_seen(tx: Tx, now: datetime) -> dict[str, Seen]:
    """The calls already admitted of each live grant with a quota, and its expiry."""
    seen = {}
    for grant_id, calls in tx.audit.allowed_counts(tx.access.limited_grants(now)).items():
        grant = tx.access.get_grant(grant_id)
        if grant is not None:
            seen[grant_id] = Seen(calls, grant.expires_at.timestamp())
    return seen
