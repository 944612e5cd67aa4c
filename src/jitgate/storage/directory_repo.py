"""Principals, principal tokens, APIs and signing keys."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, RowMapping, insert, or_, select, update

from jitgate.domain.models import Api, Injection, InjectionKind, Principal, PrincipalKind
from jitgate.storage.notify import Change, notify
from jitgate.storage.tables import apis, principal_tokens, principals, signing_keys


@dataclass(frozen=True, slots=True)
class StoredKey:
    kid: str
    private_ciphertext: bytes
    public_key: bytes
    created_at: datetime
    retired_at: datetime | None
    keep_until: datetime | None


def _principal(row: RowMapping) -> Principal:
    return Principal(
        id=row["id"],
        kind=PrincipalKind(row["kind"]),
        display_name=row["display_name"],
        groups=frozenset(row["groups"]),
        attributes=dict(row["attributes"]),
        is_admin=row["is_admin"],
        disabled=row["disabled"],
    )


def injection_to_json(injection: Injection) -> dict[str, Any]:
    return {
        "kind": injection.kind.value,
        "name": injection.name,
        "template": injection.template,
        "username": injection.username,
    }


def _api(row: RowMapping) -> Api:
    inj = row["injection"]
    return Api(
        name=row["name"],
        base_url=row["base_url"],
        injection=Injection(
            kind=InjectionKind(inj["kind"]),
            name=inj["name"],
            template=inj["template"],
            username=inj["username"],
        ),
        environment=row["environment"],
        owners=frozenset(row["owners"]),
        description=row["description"],
        masks=tuple(row["masks"] or ()),
    )


class DirectoryRepo:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    # principals -------------------------------------------------------------
    def insert_principal(self, p: Principal, at: datetime) -> None:
        self._c.execute(
            insert(principals).values(
                id=p.id,
                kind=p.kind.value,
                display_name=p.display_name,
                groups=sorted(p.groups),
                attributes=p.attributes,
                is_admin=p.is_admin,
                disabled=p.disabled,
                created_at=at,
            )
        )

    def update_principal(self, p: Principal) -> None:
        self._c.execute(
            update(principals)
            .where(principals.c.id == p.id)
            .values(
                display_name=p.display_name,
                groups=sorted(p.groups),
                attributes=p.attributes,
                is_admin=p.is_admin,
                disabled=p.disabled,
            )
        )

    def get_principal(self, principal_id: str) -> Principal | None:
        row = self._c.execute(select(principals).where(principals.c.id == principal_id)).first()
        return _principal(row._mapping) if row else None

    def list_principals(self) -> list[Principal]:
        rows = self._c.execute(select(principals).order_by(principals.c.id))
        return [_principal(r._mapping) for r in rows]

    # principal tokens -------------------------------------------------------
    def insert_token(
        self,
        *,
        token_id: str,
        principal_id: str,
        token_hash: str,
        label: str,
        at: datetime,
        expires_at: datetime | None,
    ) -> None:
        self._c.execute(
            insert(principal_tokens).values(
                id=token_id,
                principal_id=principal_id,
                token_hash=token_hash,
                label=label,
                created_at=at,
                expires_at=expires_at,
            )
        )

    def list_tokens(self, principal_id: str) -> list[dict[str, Any]]:
        """A principal's tokens, without their hashes."""
        c = principal_tokens.c
        rows = self._c.execute(
            select(c.id, c.label, c.created_at, c.expires_at, c.revoked_at)
            .where(c.principal_id == principal_id)
            .order_by(c.created_at, c.id)
        )
        return [dict(r._mapping) for r in rows]

    def revoke_token(self, principal_id: str, token_id: str, at: datetime) -> bool:
        c = principal_tokens.c
        done = self._c.execute(
            update(principal_tokens)
            .where(c.id == token_id, c.principal_id == principal_id, c.revoked_at.is_(None))
            .values(revoked_at=at)
        )
        return bool(done.rowcount)

    def principal_for_token(self, token_hash: str, now: datetime) -> Principal | None:
        query = (
            select(principals)
            .join(principal_tokens, principal_tokens.c.principal_id == principals.c.id)
            .where(
                principal_tokens.c.token_hash == token_hash,
                principal_tokens.c.revoked_at.is_(None),
                or_(principal_tokens.c.expires_at.is_(None), principal_tokens.c.expires_at > now),
                principals.c.disabled.is_(False),
            )
        )
        row = self._c.execute(query).first()
        return _principal(row._mapping) if row else None

    # APIs -------------------------------------------------------------------
    def insert_api(self, api: Api, secret_ciphertext: bytes, at: datetime) -> None:
        self._c.execute(
            insert(apis).values(
                name=api.name,
                base_url=api.base_url,
                injection=injection_to_json(api.injection),
                environment=api.environment,
                owners=sorted(api.owners),
                description=api.description,
                secret_ciphertext=secret_ciphertext,
                masks=list(api.masks) or None,
                created_at=at,
                updated_at=at,
            )
        )
        notify(self._c, Change.APIS_CHANGED)

    def set_api_secret(self, name: str, secret_ciphertext: bytes, at: datetime) -> None:
        self._c.execute(
            update(apis)
            .where(apis.c.name == name)
            .values(secret_ciphertext=secret_ciphertext, updated_at=at)
        )
        notify(self._c, Change.APIS_CHANGED)

    def set_api_masks(self, name: str, masks: tuple[str, ...], at: datetime) -> None:
        self._c.execute(
            update(apis).where(apis.c.name == name).values(masks=list(masks) or None, updated_at=at)
        )
        notify(self._c, Change.APIS_CHANGED)

    def get_api(self, name: str) -> Api | None:
        row = self._c.execute(select(apis).where(apis.c.name == name)).first()
        return _api(row._mapping) if row else None

    def list_apis(self) -> list[Api]:
        return [_api(r._mapping) for r in self._c.execute(select(apis).order_by(apis.c.name))]

    def apis_with_secrets(self) -> list[tuple[Api, bytes]]:
        rows = self._c.execute(select(apis).order_by(apis.c.name))
        return [(_api(r._mapping), r._mapping["secret_ciphertext"]) for r in rows]

    # signing keys -----------------------------------------------------------
    def insert_key(self, key: StoredKey) -> None:
        self._c.execute(
            insert(signing_keys).values(
                kid=key.kid,
                private_ciphertext=key.private_ciphertext,
                public_key=key.public_key,
                created_at=key.created_at,
                retired_at=key.retired_at,
                keep_until=key.keep_until,
            )
        )
        notify(self._c, Change.KEYS_CHANGED)

    def retire_key(self, kid: str, at: datetime, keep_until: datetime) -> None:
        self._c.execute(
            update(signing_keys)
            .where(signing_keys.c.kid == kid)
            .values(retired_at=at, keep_until=keep_until)
        )
        notify(self._c, Change.KEYS_CHANGED)

    def list_keys(self) -> list[StoredKey]:
        rows = self._c.execute(select(signing_keys).order_by(signing_keys.c.created_at))
        return [StoredKey(**dict(r._mapping)) for r in rows]
