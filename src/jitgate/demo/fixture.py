"""``jitgate up --demo``: the fixed demo that scripts can rely on (see SPEC.md).

Principals ``alice`` (engineering), ``bob`` and ``carol`` (approvers) and ``admin``; the
API ``demo`` on the demo upstream, owned by ``approvers``; their tokens in
``<state_dir>/demo-tokens.json`` (mode 0600). Re-running keeps what exists and reissues
tokens only when the file is missing or its tokens no longer work.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from jitgate.domain.models import Api, Injection, InjectionKind
from jitgate.errors import JitgateError
from jitgate.secrets import Secret
from jitgate.services import directory
from jitgate.services.bootstrap import ADMIN_ID, write_private_file
from jitgate.services.context import Context

DEMO_API = "demo"
PRINCIPALS = {
    "alice": ("Alice (requester)", ["engineering"]),
    "bob": ("Bob (approver)", ["approvers"]),
    "carol": ("Carol (approver)", ["approvers"]),
}


def _api_secret(ctx: Context) -> Secret | None:
    with ctx.store.read() as tx:
        for api, blob in tx.directory.apis_with_secrets():
            if api.name == DEMO_API:
                return ctx.box.decrypt_secret(blob, f"api:{api.name}")
    return None


def _tokens_work(ctx: Context, path: Path) -> dict[str, str] | None:
    try:
        tokens = json.loads(path.read_text())
        for name in [*PRINCIPALS, ADMIN_ID]:
            if directory.authenticate(ctx, tokens[name]).id != name:
                return None
    except (OSError, ValueError, KeyError, TypeError, JitgateError):
        return None
    return {name: tokens[name] for name in [*PRINCIPALS, ADMIN_ID]}


def set_up_demo(ctx: Context, state_dir: Path, upstream_url: str) -> tuple[dict[str, str], Secret]:
    """Ensure the demo fixture; returns the principals' tokens and the upstream secret."""
    known = {p.id for p in directory.list_principals(ctx)}
    for pid, (name, groups) in PRINCIPALS.items():
        if pid not in known:
            directory.create_principal(ctx, None, pid, display_name=name, groups=groups)
    if ADMIN_ID not in known:
        directory.create_principal(ctx, None, ADMIN_ID, display_name="Administrator", is_admin=True)
    secret = _api_secret(ctx)
    if secret is None:
        secret = Secret("sk_demo_" + secrets.token_urlsafe(24))
        api = Api(
            name=DEMO_API,
            base_url=upstream_url,
            injection=Injection(InjectionKind.HEADER, "Authorization", "Bearer {secret}"),
            environment="dev",
            owners=frozenset({"approvers"}),
            description="The demo upstream: echoes what it receives when given its key.",
        )
        directory.add_api(ctx, None, api, secret)
    path = state_dir / "demo-tokens.json"
    tokens = _tokens_work(ctx, path)
    if tokens is None:
        tokens = {
            pid: directory.issue_principal_token(ctx, None, pid, label="demo")
            for pid in [*PRINCIPALS, ADMIN_ID]
        }
        write_private_file(path, json.dumps(tokens, indent=2) + "\n")
    return tokens, secret
