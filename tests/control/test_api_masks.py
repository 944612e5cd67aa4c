"""Response masks on an API over HTTP: declared at registration, replaced, shown, refused."""

from __future__ import annotations

from typing import Any

import pytest

from jitgate.services import audit, directory
from jitgate.services.context import Context
from jitgate.storage.audit_repo import AuditFilter
from tests.control.conftest import Control, assert_problem, snapshot

BASE = {"base_url": "https://pay.example.com", "secret": "sk_live_masks_0123"}


def register(control: Control, masks: list[str]) -> Any:
    body = {"name": "payments", **BASE, "masks": masks}
    return control.call("POST", "/v1/apis", "admin", json=body)


def test_masks_are_declared_shown_and_replaced(control: Control, ctx: Context) -> None:
    created = register(control, ["$.card.number", "$.items[*].ssn", "$.card.number"])
    assert created.status_code == 201, created.text
    assert created.json()["masks"] == ["$.card.number", "$.items[*].ssn"]  # repeats are one
    assert control.ok("GET", "/v1/apis/payments", "alice")["masks"] == [
        "$.card.number",
        "$.items[*].ssn",
    ]
    demo = control.ok("GET", "/v1/apis/demo", "alice")
    assert demo["masks"] == []
    replaced = control.ok("PUT", "/v1/apis/payments/masks", "admin", json={"masks": ["$..cvv"]})
    assert replaced["masks"] == ["$..cvv"]
    listed = {a["name"]: a["masks"] for a in control.ok("GET", "/v1/apis", "alice")["items"]}
    assert listed == {"demo": [], "payments": ["$..cvv"]}
    admin = directory.get_principal(ctx, "admin")
    events = audit.query(
        ctx, admin, AuditFilter(type="api.updated"), after=0, before=None, limit=10
    )
    assert events[-1].data == {
        "masks": ["$..cvv"],
        "previous_masks": ["$.card.number", "$.items[*].ssn"],
    }


BAD = [
    ["card.number"],
    ["$"],
    ["$[?@.n > 1]"],
    ["$.a | $.b"],
    ["$." + "a" * 300],
    [""],
    [f"$.f{i}" for i in range(51)],
]


@pytest.mark.parametrize(
    "masks", BAD, ids=["no-root", "root", "filter", "union", "long", "empty", "many"]
)
def test_bad_masks_are_a_422_and_write_nothing(
    control: Control, masks: list[str], store: Any
) -> None:
    before = snapshot(store)
    assert_problem(register(control, masks), 422)
    put = control.call("PUT", "/v1/apis/demo/masks", "admin", json={"masks": masks})
    assert_problem(put, 422)
    assert snapshot(store) == before


def test_only_administrators_change_masks(control: Control) -> None:
    put = control.call("PUT", "/v1/apis/demo/masks", "alice", json={"masks": ["$.a"]})
    assert_problem(put, 403)
    missing = control.call("PUT", "/v1/apis/nope/masks", "admin", json={"masks": ["$.a"]})
    assert_problem(missing, 404, "api-not-found")
