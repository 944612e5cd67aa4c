"""Per-grant usage limits at the gateway: a lifetime call quota and a rate limit.

Guarantees (for one gateway process):

* A call is counted only when every other check has admitted it, and counting is the
  last check: a refused call never uses up quota.
* ``max_calls``: the grant's calls are never more than its quota; the count starts from
  the calls the audit log already holds for the grant (``seed``), so a restarted gateway
  does not hand out a fresh quota.
* ``rate``: a token bucket of ``calls`` tokens refilled at ``calls`` per ``seconds``; a
  burst of at most ``calls`` and, over any long stretch, no more than the rate.
* Bounded memory: entries of grants past their expiry are dropped by ``prune``.

Several gateway processes count separately (each seeded from the audit log when it
starts), so a quota can be overshot by what the other processes admitted since; the
docs say so.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

from jitgate.tokens.grant_token import GrantClaims


@dataclass(slots=True)
class _Use:
    calls: int
    tokens: float
    refilled_at: float
    expires: float


class UsageMeter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._uses: dict[str, _Use] = {}
        self._seed: Mapping[str, int] = {}

    def seed(self, calls: Mapping[str, int]) -> None:
        """Calls already admitted per grant (from the audit log), for grants not yet seen."""
        with self._lock:
            self._seed = dict(calls)

    def admit(self, claims: GrantClaims, now: float) -> tuple[str, str] | None:
        """Count one call of ``claims``' grant at monotonic time ``now``; None when admitted,
        else ``(reason, detail)``."""
        if claims.max_calls is None and claims.rate is None:
            return None
        with self._lock:
            use = self._uses.get(claims.grant_id)
            if use is None:
                burst = float(claims.rate[0]) if claims.rate else 0.0
                use = _Use(self._seed.get(claims.grant_id, 0), burst, now, claims.expires)
                self._uses[claims.grant_id] = use
            if claims.max_calls is not None and use.calls >= claims.max_calls:
                return "quota-exhausted", f"the grant's {claims.max_calls} calls are used up"
            if claims.rate is not None:
                calls, seconds = claims.rate
                use.tokens = min(
                    float(calls), use.tokens + (now - use.refilled_at) * calls / seconds
                )
                use.refilled_at = now
                if use.tokens < 1.0:
                    return "rate-limited", f"the grant allows {calls} calls per {seconds:g} s"
                use.tokens -= 1.0
            use.calls += 1
            return None

    def prune(self, now_epoch: float) -> None:
        """Forget grants whose tokens have expired (``now_epoch``: wall-clock seconds)."""
        with self._lock:
            for grant_id in [g for g, use in self._uses.items() if use.expires <= now_epoch]:
                del self._uses[grant_id]
