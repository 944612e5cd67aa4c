"""The composition root: settings in, running services out. The only place that chooses.

A gateway worker (:func:`build_worker`) needs the gateway, the store and the audit
writer only: what the control plane alone needs (policy engine, notifications, the
services) is imported by :func:`build` when it runs, so that a worker process does not
carry it (its memory is part of the gateway's footprint).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from jitgate.audit.events import NewEvent
from jitgate.audit.writer import Append, AuditWriter
from jitgate.clock import Clock, SystemClock
from jitgate.config import Settings
from jitgate.errors import ConfigError
from jitgate.gateway.authz import DecisionEndpoints
from jitgate.gateway.enforce import Enforcer
from jitgate.gateway.proxy import Proxy
from jitgate.gateway.revocations import RevocationTable
from jitgate.gateway.usage import UsageMeter
from jitgate.gateway.view import GatewayView
from jitgate.secrets import Secret, SecretBox, load_master_key
from jitgate.storage.database import normalise_url
from jitgate.storage.store import Store

if TYPE_CHECKING:
    from jitgate.notify.notifier import Notifier
    from jitgate.policy.model import Policy
    from jitgate.services.context import ChangeFeed, Context

log = logging.getLogger(__name__)

EMPTY_POLICY = "version: 1\nrules: []\n"


def open_store(url: str, *, migrate_schema: bool = True) -> Store:
    """The store, migrated; an unreachable or unusable database is one clear error."""
    try:
        return Store.open(url, migrate_schema=migrate_schema)
    except SQLAlchemyError as exc:
        cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        shown = make_url(normalise_url(url)).render_as_string(hide_password=True)
        raise ConfigError(f"database_url: cannot use {shown}: {cause}") from exc


def choose_policy(settings: Settings, *, demo: bool) -> Policy:
    from jitgate.policy import DEMO_POLICY_PATH, load_policy, parse_policy  # noqa: PLC0415

    if settings.policy_file is not None:
        return load_policy(settings.policy_file)
    if demo:
        return load_policy(DEMO_POLICY_PATH)
    log.warning("no policy_file is configured: every request will be denied")
    return parse_policy(EMPTY_POLICY, "(no policy configured)")


@dataclass
class Runtime:
    settings: Settings
    store: Store
    ctx: Context
    writer: AuditWriter
    view: GatewayView | None
    proxy: Proxy | None
    notifier: Notifier | None = None
    decisions: DecisionEndpoints | None = None  # the /authz/… endpoints, when enabled

    def close(self) -> None:
        self.writer.close()
        self.store.close()


def build(
    settings: Settings,
    *,
    demo: bool = False,
    gateway: bool = True,
    clock: Clock | None = None,
    feed: ChangeFeed | None = None,
) -> Runtime:
    """Everything one process needs. ``feed``: where changes are announced when the
    gateway runs in other processes of this machine (their shared revocation table)."""
    # The control plane's parts, imported here (see the module docstring).
    from jitgate.notify.notifier import Notifier  # noqa: PLC0415
    from jitgate.services.bootstrap import ensure_admin, ensure_keyring  # noqa: PLC0415
    from jitgate.services.context import Context, NullFeed  # noqa: PLC0415
    from jitgate.services.policy import record_policy  # noqa: PLC0415

    clock = clock or SystemClock()
    settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    box = _secret_box(settings)
    policy = choose_policy(settings, demo=demo)
    store = open_store(settings.database)
    notifier = None
    if settings.notifications.enabled:
        notifier = Notifier(settings.notifications, store, clock, control_url=settings.control.url)
        store.router = notifier.router  # before anything is audited: nothing goes unannounced
    ring = ensure_keyring(store, box, clock)
    writer = _audit_writer(settings, store)
    view = proxy = decisions = None
    if gateway:
        view = GatewayView(
            store, box, clock, max_staleness=settings.revocation.max_staleness.total_seconds()
        )
        view.resync()
    ctx = Context(
        store=store,
        clock=clock,
        box=box,
        issuer=settings.token_issuer,
        gateway_url=settings.gateway.url,
        policy=policy,
        keyring=ring,
        audit=writer,
        feed=view if view is not None else feed or NullFeed(),
        slack_signing_secret=_slack_signing_secret(settings),
        policy_file=settings.policy_file,
        allow_link_local_upstreams=settings.gateway.allow_link_local_upstreams,
    )
    if view is not None:
        proxy, decisions = _enforcement(settings, view, writer, clock)
    record_policy(ctx, policy)
    ensure_admin(ctx, settings.state_dir)
    return Runtime(settings, store, ctx, writer, view, proxy, notifier, decisions)


@dataclass
class WorkerRuntime:
    """A gateway worker process (``--workers N``): enforcement only, no control plane."""

    settings: Settings
    store: Store
    writer: AuditWriter
    view: GatewayView
    proxy: Proxy
    decisions: DecisionEndpoints | None

    def close(self) -> None:
        self.writer.close()
        self.store.close()


def build_worker(
    settings: Settings, shared: RevocationTable | None, usage: UsageMeter | None = None
) -> WorkerRuntime:
    """A gateway worker; ``shared``: the revocation table of this machine's control plane;
    ``usage``: the usage table all the workers of this gateway count in. The parent has
    already validated the settings, migrated the database and made the keys."""
    clock = SystemClock()
    store = open_store(settings.database, migrate_schema=False)
    writer = _audit_writer(settings, store)
    view = GatewayView(
        store,
        _secret_box(settings),
        clock,
        max_staleness=settings.revocation.max_staleness.total_seconds(),
        shared=shared,
        usage=usage,
    )
    view.resync()
    proxy, decisions = _enforcement(settings, view, writer, clock)
    return WorkerRuntime(settings, store, writer, view, proxy, decisions)


def _secret_box(settings: Settings) -> SecretBox:
    env_key = Secret(settings.master_key.get_secret_value()) if settings.master_key else None
    return SecretBox(load_master_key(env_key, settings.master_key_path))


def _audit_writer(settings: Settings, store: Store) -> AuditWriter:
    writer = AuditWriter(
        _appender(store),
        batch_size=settings.audit.batch_size,
        flush_interval=settings.audit.flush_interval,
        queue_size=settings.audit.queue_size,
    )
    writer.start()
    return writer


def _enforcement(
    settings: Settings, view: GatewayView, writer: AuditWriter, clock: Clock
) -> tuple[Proxy, DecisionEndpoints | None]:
    enforcer = Enforcer(
        view,
        issuer=settings.token_issuer,
        leeway=settings.gateway.leeway,
        cache_size=settings.gateway.token_cache_size,
    )
    proxy = Proxy(
        enforcer,
        writer,
        clock,
        connect_timeout=settings.gateway.upstream_connect_timeout.total_seconds(),
        timeout=settings.gateway.upstream_timeout.total_seconds(),
        client_timeout=settings.gateway.client_timeout.total_seconds(),
        max_body_size=settings.gateway.max_body_size,
        allow_link_local=settings.gateway.allow_link_local_upstreams,
        max_mask_body=settings.gateway.max_mask_body,
    )
    decisions = None
    if settings.gateway.decisions.enabled:
        decisions = DecisionEndpoints(proxy, allow_from=settings.gateway.decisions.allow_from)
    return proxy, decisions


def _slack_signing_secret(settings: Settings) -> Secret | None:
    slack = settings.notifications.slack
    return Secret(slack.signing_secret.get_secret_value()) if slack else None


def _appender(store: Store) -> Append:
    def append(events: Sequence[NewEvent]) -> None:
        with store.transaction() as tx:
            tx.audit.append(events)

    return append
