"""Administration: principals, their tokens, and upstream APIs with their secrets.

Principal tokens are ``jgp_`` + 32 random bytes (base64url); only their SHA-256 is
stored. Upstream URLs are http/https with a host and without userinfo, query or
fragment, and not a link-local or cloud-metadata address literal unless the deployment
allows those (:mod:`jitgate.domain.addresses`; names are judged again by the gateway at
connect time); secrets are encrypted before they reach the database and are never
returned. An API's response masks are JSONPaths checked by :func:`jitgate.domain.masks.parse_masks`
(a bad one is refused with what is wrong, before anything is written).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import replace
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from jitgate.audit.events import EventType, NewEvent
from jitgate.domain.addresses import refused_address
from jitgate.domain.masks import parse_masks
from jitgate.domain.models import Api, Injection, InjectionKind, Principal, PrincipalKind
from jitgate.errors import Conflict, InvalidInput, NotFound, Unauthenticated
from jitgate.secrets import Secret
from jitgate.services.context import Context, new_id, require_admin

TOKEN_PREFIX = "jgp_"  # noqa: S105 - a prefix, not a secret
SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")
# Actors jitgate itself writes into the audit log.
RESERVED_PRINCIPAL_IDS = frozenset({"system", "policy"})
# Paths the gateway answers itself, so they cannot be API names (the first path segment).
RESERVED_API_NAMES = frozenset({"healthz", "readyz", "metrics", "authz"})
_RESERVED_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "te", "upgrade"}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_slug(value: str, what: str) -> str:
    if not isinstance(value, str) or not SLUG.fullmatch(value):
        raise InvalidInput(
            f"invalid {what} {value!r}: use 1-63 lower-case letters, digits, '.', '_' or '-'"
        )
    return value


def authenticate(ctx: Context, token: str | None) -> Principal:
    """The principal a bearer token belongs to; ``Unauthenticated`` otherwise."""
    if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        raise Unauthenticated("a principal token (Authorization: Bearer jgp_…) is required")
    with ctx.store.read() as tx:
        principal = tx.directory.principal_for_token(hash_token(token), ctx.now())
    if principal is None:
        raise Unauthenticated("the principal token is unknown, expired or revoked")
    return principal


def create_principal(
    ctx: Context,
    actor: Principal | None,
    principal_id: str,
    *,
    kind: PrincipalKind = PrincipalKind.USER,
    display_name: str = "",
    groups: list[str] | None = None,
    attributes: dict[str, Any] | None = None,
    is_admin: bool = False,
) -> Principal:
    """Create a principal; ``actor`` None means the system bootstrap."""
    if actor is not None:
        require_admin(actor.is_admin, "create principals")
    check_slug(principal_id, "principal id")
    if principal_id in RESERVED_PRINCIPAL_IDS:
        raise InvalidInput(
            f"{principal_id!r} names jitgate itself in the audit log; choose another id"
        )
    if len(display_name) > 200:
        raise InvalidInput("the display name is longer than 200 characters")
    group_set = frozenset(check_slug(g, "group") for g in groups or [])
    principal = Principal(
        id=principal_id,
        kind=kind,
        display_name=display_name or principal_id,
        groups=group_set,
        attributes=dict(attributes or {}),
        is_admin=is_admin,
    )
    now = ctx.now()
    with ctx.store.transaction() as tx:
        if tx.directory.get_principal(principal_id) is not None:
            raise Conflict(f"principal {principal_id!r} already exists", code="principal-exists")
        tx.directory.insert_principal(principal, now)
        tx.audit.append(
            [
                NewEvent(
                    type=EventType.PRINCIPAL_CREATED,
                    at=now,
                    actor=actor.id if actor else "system",
                    principal=principal_id,
                    data={
                        "kind": kind.value,
                        "groups": sorted(group_set),
                        "is_admin": is_admin,
                    },
                )
            ]
        )
    return principal


def issue_principal_token(
    ctx: Context,
    actor: Principal | None,
    principal_id: str,
    *,
    label: str = "",
    expires_at: datetime | None = None,
) -> str:
    """A new token for a principal, returned once and stored only as its hash."""
    if actor is not None:
        require_admin(actor.is_admin, "issue principal tokens")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token_id = new_id("ptk")
    now = ctx.now()
    if len(label) > 200:
        raise InvalidInput("the token label is longer than 200 characters")
    if expires_at is not None and expires_at.utcoffset() is None:
        raise InvalidInput("the token expiry needs a time zone (e.g. 2026-01-05T10:00:00Z)")
    if expires_at is not None and expires_at <= now:
        raise InvalidInput("the token expiry must be in the future")
    with ctx.store.transaction() as tx:
        if tx.directory.get_principal(principal_id) is None:
            raise NotFound(f"no principal {principal_id!r}", code="principal-not-found")
        tx.directory.insert_token(
            token_id=token_id,
            principal_id=principal_id,
            token_hash=hash_token(token),
            label=label,
            at=now,
            expires_at=expires_at,
        )
        tx.audit.append(
            [
                NewEvent(
                    type=EventType.PRINCIPAL_TOKEN_CREATED,
                    at=now,
                    actor=actor.id if actor else "system",
                    principal=principal_id,
                    data={
                        "token_id": token_id,
                        "label": label,
                        "expires_at": expires_at.isoformat() if expires_at else None,
                    },
                )
            ]
        )
    return token


def list_tokens(ctx: Context, actor: Principal, principal_id: str) -> list[dict[str, Any]]:
    """A principal's tokens (never the tokens themselves): its own, or any for an admin."""
    if actor.id != principal_id:
        require_admin(actor.is_admin, "list another principal's tokens")
    with ctx.store.read() as tx:
        if tx.directory.get_principal(principal_id) is None:
            raise NotFound(f"no principal {principal_id!r}", code="principal-not-found")
        return tx.directory.list_tokens(principal_id)


def revoke_token(ctx: Context, actor: Principal, principal_id: str, token_id: str) -> None:
    """Revoke one principal token at once: its own holder, or an admin, may do it."""
    if actor.id != principal_id:
        require_admin(actor.is_admin, "revoke another principal's tokens")
    now = ctx.now()
    with ctx.store.transaction() as tx:
        if not tx.directory.revoke_token(principal_id, token_id, now):
            raise NotFound(
                f"no unrevoked token {token_id!r} of {principal_id!r}", code="token-not-found"
            )
        tx.audit.append(
            [
                NewEvent(
                    type=EventType.PRINCIPAL_TOKEN_REVOKED,
                    at=now,
                    actor=actor.id,
                    principal=principal_id,
                    data={"token_id": token_id},
                )
            ]
        )


def set_disabled(ctx: Context, actor: Principal, principal_id: str, *, disabled: bool) -> Principal:
    """Disable (or re-enable) a principal: a disabled one cannot authenticate or act."""
    require_admin(actor.is_admin, "disable or enable principals")
    if disabled and actor.id == principal_id:
        raise InvalidInput("an administrator cannot disable itself")
    now = ctx.now()
    with ctx.store.transaction() as tx:
        current = tx.directory.get_principal(principal_id)
        if current is None:
            raise NotFound(f"no principal {principal_id!r}", code="principal-not-found")
        changed = replace(current, disabled=disabled)
        tx.directory.update_principal(changed)
        tx.audit.append(
            [
                NewEvent(
                    type=EventType.PRINCIPAL_UPDATED,
                    at=now,
                    actor=actor.id,
                    principal=principal_id,
                    data={"disabled": disabled},
                )
            ]
        )
    return changed


def list_principals(ctx: Context) -> list[Principal]:
    with ctx.store.read() as tx:
        return tx.directory.list_principals()


def get_principal(ctx: Context, principal_id: str) -> Principal:
    with ctx.store.read() as tx:
        principal = tx.directory.get_principal(principal_id)
    if principal is None:
        raise NotFound(f"no principal {principal_id!r}", code="principal-not-found")
    return principal


def check_base_url(url: str, *, allow_link_local: bool = False) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InvalidInput(f"base_url {url!r}: only http and https upstreams are allowed")
    if not parts.hostname:
        raise InvalidInput(f"base_url {url!r}: a host is required")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidInput(f"base_url {url!r}: credentials in the URL are refused; use the secret")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise InvalidInput(f"base_url {url!r}: no query string or fragment")
    if any(ord(ch) < 0x21 or ord(ch) > 0x7E for ch in url):
        raise InvalidInput(f"base_url {url!r}: only printable ASCII is allowed")
    refused = None if allow_link_local else refused_address(parts.hostname)
    if refused:
        raise InvalidInput(
            f"base_url {url!r}: {refused}; set gateway.allow_link_local_upstreams to allow it"
        )
    return url.rstrip("/")


def check_injection(injection: Injection) -> Injection:
    if injection.kind is InjectionKind.HEADER:
        if (
            not _HEADER_NAME.fullmatch(injection.name)
            or injection.name.lower() in _RESERVED_HEADERS
        ):
            raise InvalidInput(f"injection header name {injection.name!r} is not allowed")
        if injection.template.count("{secret}") != 1:
            raise InvalidInput("the injection template must contain {secret} exactly once")
        if any(ch in injection.template for ch in "\r\n\x00"):
            raise InvalidInput("the injection template must be one line")
    elif injection.kind is InjectionKind.QUERY:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", injection.name):
            raise InvalidInput(f"injection query parameter {injection.name!r} is not allowed")
    elif injection.kind is InjectionKind.BASIC and (
        ":" in injection.username or any(ord(ch) < 0x20 for ch in injection.username)
    ):
        raise InvalidInput("the basic-auth username must not contain ':' or control characters")
    return injection


def check_secret(secret: Secret) -> Secret:
    value = secret.reveal()
    if not value or len(value) > 4096 or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise InvalidInput("the secret must be 1-4096 printable characters")
    return secret


def add_api(ctx: Context, actor: Principal | None, api: Api, secret: Secret) -> Api:
    if actor is not None:
        require_admin(actor.is_admin, "register APIs")
    check_slug(api.name, "API name")
    if api.name in RESERVED_API_NAMES:
        raise InvalidInput(f"{api.name!r} is reserved by the gateway; choose another API name")
    check_slug(api.environment, "environment")
    for group in api.owners:
        check_slug(group, "owner group")
    api = Api(
        name=api.name,
        base_url=check_base_url(api.base_url, allow_link_local=ctx.allow_link_local_upstreams),
        injection=check_injection(api.injection),
        environment=api.environment,
        owners=api.owners,
        description=api.description,
        masks=check_masks(api.masks),
    )
    check_secret(secret)
    now = ctx.now()
    with ctx.store.transaction() as tx:
        if tx.directory.get_api(api.name) is not None:
            raise Conflict(f"API {api.name!r} already exists", code="api-exists")
        tx.directory.insert_api(api, ctx.box.encrypt_secret(secret, f"api:{api.name}"), now)
        tx.audit.append(
            [
                NewEvent(
                    type=EventType.API_CREATED,
                    at=now,
                    actor=actor.id if actor else "system",
                    api=api.name,
                    data={
                        "base_url": api.base_url,
                        "environment": api.environment,
                        "injection": api.injection.kind.value,
                        "owners": sorted(api.owners),
                        "masks": list(api.masks),
                    },
                )
            ]
        )
    ctx.feed.apis_changed()
    return api


def check_masks(masks: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(mask.text for mask in parse_masks(masks))


def set_masks(ctx: Context, actor: Principal, name: str, masks: tuple[str, ...]) -> Api:
    """Replace an API's response masks (an empty tuple removes them); in force at once."""
    require_admin(actor.is_admin, "change API masks")
    masks = check_masks(masks)
    now = ctx.now()
    with ctx.store.transaction() as tx:
        current = tx.directory.get_api(name)
        if current is None:
            raise NotFound(f"no API {name!r}", code="api-not-found")
        tx.directory.set_api_masks(name, masks, now)
        tx.audit.append(
            [
                NewEvent(
                    type=EventType.API_UPDATED,
                    at=now,
                    actor=actor.id,
                    api=name,
                    data={"masks": list(masks), "previous_masks": list(current.masks)},
                )
            ]
        )
    ctx.feed.apis_changed()
    return replace(current, masks=masks)


def rotate_secret(ctx: Context, actor: Principal, name: str, secret: Secret) -> None:
    require_admin(actor.is_admin, "rotate API secrets")
    check_secret(secret)
    now = ctx.now()
    with ctx.store.transaction() as tx:
        if tx.directory.get_api(name) is None:
            raise NotFound(f"no API {name!r}", code="api-not-found")
        tx.directory.set_api_secret(name, ctx.box.encrypt_secret(secret, f"api:{name}"), now)
        tx.audit.append(
            [NewEvent(type=EventType.API_SECRET_ROTATED, at=now, actor=actor.id, api=name)]
        )
    ctx.feed.apis_changed()


def list_apis(ctx: Context) -> list[Api]:
    with ctx.store.read() as tx:
        return tx.directory.list_apis()


def get_api(ctx: Context, name: str) -> Api:
    with ctx.store.read() as tx:
        api = tx.directory.get_api(name)
    if api is None:
        raise NotFound(f"no API {name!r}", code="api-not-found")
    return api
