"""Routes for administration (APIs, principals, policy), the audit log and key discovery."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query
from pydantic import AwareDatetime

from jitgate.control.deps import Caller, Ctx
from jitgate.control.schemas import (
    ApiIn,
    MasksIn,
    PrincipalIn,
    SecretIn,
    TokenIn,
    api_json,
    in_range,
    iso,
    principal_json,
)
from jitgate.domain.durations import format_duration
from jitgate.domain.models import Api, Injection, InjectionKind, PrincipalKind
from jitgate.secrets import Secret
from jitgate.services import audit, directory, grants, keys
from jitgate.services.context import require_admin
from jitgate.services.policy import Trigger, reload_policy
from jitgate.storage.audit_repo import AuditFilter

router = APIRouter(prefix="/v1")


@router.get("/me", tags=["principals"])
def me(caller: Caller) -> dict[str, Any]:
    return principal_json(caller)


@router.get("/apis", tags=["apis"])
def list_apis(ctx: Ctx, caller: Caller) -> dict[str, Any]:
    return {"items": [api_json(a) for a in directory.list_apis(ctx)]}


@router.get("/apis/{name}", tags=["apis"])
def read_api(name: str, ctx: Ctx, caller: Caller) -> dict[str, Any]:
    return api_json(directory.get_api(ctx, name))


@router.post("/apis", status_code=201, tags=["apis"])
def add_api(body: ApiIn, ctx: Ctx, caller: Caller) -> dict[str, Any]:
    api = Api(
        name=body.name,
        base_url=body.base_url,
        injection=Injection(
            kind=InjectionKind(body.injection.kind),
            name=body.injection.name,
            template=body.injection.template,
            username=body.injection.username,
        ),
        environment=body.environment,
        owners=frozenset(body.owners),
        description=body.description,
        masks=tuple(body.masks),
    )
    return api_json(directory.add_api(ctx, caller, api, Secret(body.secret)))


@router.put("/apis/{name}/masks", tags=["apis"])
def set_masks(name: str, body: MasksIn, ctx: Ctx, caller: Caller) -> dict[str, Any]:
    """Replace the API's response masks (``[]`` removes them); in force on the next call."""
    return api_json(directory.set_masks(ctx, caller, name, tuple(body.masks)))


@router.post("/apis/{name}/secret", status_code=204, tags=["apis"])
def rotate_secret(name: str, body: SecretIn, ctx: Ctx, caller: Caller) -> None:
    directory.rotate_secret(ctx, caller, name, Secret(body.secret))


@router.get("/principals", tags=["principals"])
def list_principals(ctx: Ctx, caller: Caller) -> dict[str, Any]:
    return {"items": [principal_json(p) for p in directory.list_principals(ctx)]}


@router.get("/principals/{principal_id}", tags=["principals"])
def read_principal(principal_id: str, ctx: Ctx, caller: Caller) -> dict[str, Any]:
    return principal_json(directory.get_principal(ctx, principal_id))


@router.post("/principals", status_code=201, tags=["principals"])
def add_principal(body: PrincipalIn, ctx: Ctx, caller: Caller) -> dict[str, Any]:
    created = directory.create_principal(
        ctx,
        caller,
        body.id,
        kind=PrincipalKind(body.kind),
        display_name=body.display_name,
        groups=body.groups,
        attributes=body.attributes,
        is_admin=body.is_admin,
    )
    return principal_json(created)


@router.post("/principals/{principal_id}/tokens", status_code=201, tags=["principals"])
def principal_token(
    principal_id: str, ctx: Ctx, caller: Caller, body: TokenIn | None = None
) -> dict[str, Any]:
    body = body or TokenIn()
    token = directory.issue_principal_token(
        ctx,
        caller,
        principal_id,
        label=body.label,
        expires_at=in_range(body.expires_at, "expires_at"),
    )
    return {"principal": principal_id, "token": token, "expires_at": iso(body.expires_at)}


@router.get("/principals/{principal_id}/tokens", tags=["principals"])
def principal_tokens(principal_id: str, ctx: Ctx, caller: Caller) -> dict[str, Any]:
    items = directory.list_tokens(ctx, caller, principal_id)
    return {
        "items": [
            {
                "id": t["id"],
                "label": t["label"],
                "created_at": iso(t["created_at"]),
                "expires_at": iso(t["expires_at"]),
                "revoked_at": iso(t["revoked_at"]),
            }
            for t in items
        ]
    }


@router.post(
    "/principals/{principal_id}/tokens/{token_id}/revoke", status_code=204, tags=["principals"]
)
def revoke_principal_token(principal_id: str, token_id: str, ctx: Ctx, caller: Caller) -> None:
    directory.revoke_token(ctx, caller, principal_id, token_id)


@router.post("/principals/{principal_id}/disable", tags=["principals"])
def disable_principal(principal_id: str, ctx: Ctx, caller: Caller) -> dict[str, Any]:
    """Disable a principal and revoke every grant it holds."""
    changed = directory.set_disabled(ctx, caller, principal_id, disabled=True)
    ended = grants.kill_switch(
        ctx, caller, principal=principal_id, api=None, reason="principal disabled"
    )
    return {**principal_json(changed), "revoked_grants": [g.id for g in ended]}


@router.post("/principals/{principal_id}/enable", tags=["principals"])
def enable_principal(principal_id: str, ctx: Ctx, caller: Caller) -> dict[str, Any]:
    return principal_json(directory.set_disabled(ctx, caller, principal_id, disabled=False))


@router.post("/keys/rotate", tags=["keys"])
def rotate_keys(ctx: Ctx, caller: Caller) -> dict[str, Any]:
    ring = keys.rotate(ctx, caller)
    return {"signing_kid": ring.signing_kid, **ring.jwks()}


@router.get("/policy", tags=["policy"])
def read_policy(ctx: Ctx, caller: Caller) -> dict[str, Any]:
    policy = ctx.policy
    return {
        "version": policy.version,
        "source": Path(policy.source).name,  # the file's name, not the server's layout
        "digest": policy.digest,
        "loaded_at": iso(ctx.policy_loaded_at),
        "defaults": {
            "max_duration": format_duration(policy.defaults.max_duration),
            "pending_ttl": format_duration(policy.defaults.pending_ttl),
        },
        "rules": [r.as_dict() for r in policy.rules],
    }


@router.post("/policy/reload", tags=["policy"])
def reload_policy_file(ctx: Ctx, caller: Caller) -> dict[str, Any]:
    """Load ``policy_file`` again (administrators). A file that does not load is a 422
    problem naming file and line, and the policy in force stays."""
    done = reload_policy(ctx, caller, Trigger.API)
    return {
        "digest": done.policy.digest,
        "previous_digest": done.previous_digest,
        "changed": done.changed,
        "source": Path(done.policy.source).name,
        "loaded_at": iso(done.loaded_at),
        "rules": [r.name for r in done.policy.rules],
    }


@router.get("/audit", tags=["audit"])
def read_audit(
    ctx: Ctx,
    caller: Caller,
    type: str | None = Query(default=None, max_length=64),
    actor: str | None = Query(default=None, max_length=64),
    principal: str | None = Query(default=None, max_length=64),
    api: str | None = Query(default=None, max_length=64),
    grant: str | None = Query(default=None, max_length=32),
    request: str | None = Query(default=None, max_length=32),
    since: AwareDatetime | None = None,
    until: AwareDatetime | None = None,
    after: int = Query(
        default=0, ge=0, le=2**62, description="cursor: the first events with seq > after"
    ),
    before: int | None = Query(
        default=None, ge=1, le=2**62, description="cursor: the last events with seq < before"
    ),
    limit: int = Query(default=100, ge=1, le=1000),
) -> dict[str, Any]:
    f = AuditFilter(
        type=type,
        since=in_range(since, "since"),
        until=in_range(until, "until"),
        actor=actor,
        principal=principal,
        api=api,
        grant=grant,
        request=request,
    )
    events = audit.query(ctx, caller, f, after=after, before=before, limit=limit)
    full = len(events) == limit
    return {
        "items": [e.as_dict() for e in events],
        "next_after": events[-1].seq if full and before is None else None,
        "next_before": events[0].seq if full and before is not None else None,
    }


@router.get("/audit/verify", tags=["audit"])
def verify_audit(ctx: Ctx, caller: Caller) -> dict[str, Any]:
    return audit.verify(ctx, caller).as_dict()


@router.post("/audit/checkpoints", tags=["audit"])
def checkpoint_audit(ctx: Ctx, caller: Caller) -> dict[str, Any]:
    require_admin(caller.is_admin, "write audit checkpoints")
    cp = audit.checkpoint(ctx, actor=caller.id) or audit.latest_checkpoint(ctx)
    return {"checkpoint": cp.as_dict() if cp else None}
