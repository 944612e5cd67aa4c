"""What every use case is handed: storage, clock, keys, policy and the change feed."""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

from jitgate.audit.writer import AuditSink
from jitgate.clock import Clock
from jitgate.domain.models import Principal
from jitgate.errors import Forbidden
from jitgate.policy.model import Policy
from jitgate.secrets import Secret, SecretBox
from jitgate.storage.store import Store, Tx
from jitgate.tokens.keys import KeyRing

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def new_id(prefix: str) -> str:
    """``req_…``/``grt_…``: a prefix and 16 random base32 characters (80 bits)."""
    return prefix + "_" + "".join(secrets.choice(_ALPHABET) for _ in range(16))


class ChangeFeed(Protocol):
    """Where committed changes that enforcement depends on are announced.

    In one process (``jitgate up``) the gateway's in-memory view implements this, so a
    revocation is in force before the revoke call returns.
    """

    def grant_ended(self, grant_id: str, expires_at: datetime) -> None: ...

    def apis_changed(self) -> None: ...

    def keys_changed(self) -> None: ...


class NullFeed:
    """For processes that serve no gateway."""

    def grant_ended(self, grant_id: str, expires_at: datetime) -> None:
        return None

    def apis_changed(self) -> None:
        return None

    def keys_changed(self) -> None:
        return None


@dataclass
class Context:
    store: Store
    clock: Clock
    box: SecretBox
    issuer: str
    gateway_url: str
    policy: Policy
    keyring: KeyRing
    audit: AuditSink
    feed: ChangeFeed = field(default_factory=NullFeed)
    slack_signing_secret: Secret | None = None  # checks Slack's interactions; None: Slack off
    policy_file: Path | None = None  # where reloads read the policy; None: not reloadable
    allow_link_local_upstreams: bool = False  # gateway.allow_link_local_upstreams
    policy_loaded_at: datetime = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.policy_loaded_at = self.clock.now()

    def now(self) -> datetime:
        return self.clock.now()

    def replace_policy(self, policy: Policy) -> None:
        with self._lock:
            self.policy = policy
            self.policy_loaded_at = self.clock.now()

    def replace_keyring(self, keyring: KeyRing) -> None:
        with self._lock:
            self.keyring = keyring


def current_principal(tx: Tx, principal: Principal) -> Principal:
    """The principal as stored now: groups and admin rights are judged as of this moment."""
    current = tx.directory.get_principal(principal.id)
    if current is None or current.disabled:
        raise Forbidden("this principal is disabled", code="principal-disabled")
    return current


def require_admin(is_admin: bool, action: str) -> None:
    if not is_admin:
        raise Forbidden(f"only an administrator may {action}", code="not-admin")
