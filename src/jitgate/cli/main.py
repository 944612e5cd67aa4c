"""``jitgate``: run the servers, and talk to a control plane as a principal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from jitgate.cli import access_cmds, admin_cmds, audit_cmds, grant_cmds
from jitgate.cli.client import Client, fail, save_profile
from jitgate.errors import JitgateError

if TYPE_CHECKING:
    from jitgate.config import Settings
    from jitgate.wiring import Runtime

app = typer.Typer(
    help="jitgate: Just-In-Time access to HTTP APIs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
serve_app = typer.Typer(help="Run one role per process (scale-out).", no_args_is_help=True)
app.add_typer(serve_app, name="serve")
access_cmds.register(app)
grant_cmds.register(app)
admin_cmds.register(app)
audit_cmds.register(app)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="jitgate.yaml (or JITGATE_CONFIG)")
]


@app.callback()
def main(
    ctx: typer.Context,
    profile: Annotated[
        str, typer.Option(envvar="JITGATE_PROFILE", help="CLI profile (see 'jitgate login')")
    ] = "default",
    server: Annotated[str | None, typer.Option(help="control-plane URL")] = None,
    token: Annotated[str | None, typer.Option(help="principal token (jgp_…)")] = None,
) -> None:
    ctx.obj = Client.from_options(profile, server, token)
    ctx.meta["profile"] = profile


def _settings(config: Path | None) -> Settings:
    # Settings and logging load only for the commands that run servers (CLI start-up time).
    from jitgate.config import load_settings  # noqa: PLC0415
    from jitgate.logs import configure  # noqa: PLC0415

    try:
        settings = load_settings(config)
    except JitgateError as exc:
        fail(exc.detail, code=2)
    configure(settings.log_level)
    return settings


def _walkthrough(rt: Runtime, tokens: dict[str, str] | None) -> None:
    s = rt.settings
    state = s.state_dir
    typer.secho("jitgate is up.", fg=typer.colors.GREEN, bold=True, err=True)
    typer.echo(
        f"  control plane  {s.control.url}\n"
        f"  gateway        {s.gateway.url}\n"
        f"  database       {s.database.split('@')[-1]}\n"
        f"  state          {state}",
        err=True,
    )
    if tokens is None:
        typer.echo(f"  admin token    {state / 'admin-token'} (first start only)", err=True)
        return
    tokens_file = state / "demo-tokens.json"
    server = s.control.url
    login = "\n".join(
        f"jitgate --profile {name} login --server {server} --token-file {tokens_file} --key {name}"
        for name in ("alice", "bob", "admin")
    )
    typer.echo(
        f"""
Demo: API 'demo' -> upstream http://{s.demo.upstream_listen} (holds a secret key you never see)
Tokens of alice, bob, carol and admin: {tokens_file}

In another terminal (source .venv/bin/activate first):

# 1. Log in as alice, bob and admin (profiles)
{login}

# 2. alice: read access is approved at once by policy
TOKEN=$(jitgate --profile alice request demo --scope 'GET /v1/**' --for 10m \\
        --reason 'debug order 42' --wait)
curl -s {s.gateway.url}/demo/v1/orders/42 -H "Authorization: Bearer $TOKEN"

# 3. alice: writes need an approver (she cannot approve her own request)
jitgate --profile alice request demo --scope 'POST /v1/orders' --for 30m --reason 'fix order 42'
jitgate --profile bob requests --pending
jitgate --profile bob approve REQUEST_ID --comment 'ok'     # prints the grant id
W=$(jitgate --profile alice token GRANT_ID)
curl -s -X POST {s.gateway.url}/demo/v1/orders -d '{{"qty": 1}}' -H "Authorization: Bearer $W"

# 4. Run one command with its own grant (--new), released when it ends
#    (without --new, exec and request reuse an active grant that already covers the scopes)
jitgate --profile alice exec demo --scope 'GET /v1/**' --for 5m --reason 'smoke test' --new -- \\
  sh -c 'curl -fsS "$JITGATE_URL/v1/ping" -H "Authorization: Bearer $JITGATE_TOKEN"'

# 5. bob (an owner of API demo) revokes alice's grant: her next call is refused
jitgate --profile bob revoke GRANT_ID --reason 'incident 7'
jitgate --profile bob revoke --api demo --reason 'incident 7'   # kill switch: every grant

# 6. The audit trail, and its integrity
jitgate --profile admin audit
jitgate --profile admin audit verify
""",
        err=True,
    )


WorkersOption = Annotated[
    int | None,
    typer.Option(
        "--workers",
        min=1,
        max=256,
        help="gateway worker processes (or gateway.workers); default: see the command",
    ),
]


def _run(config: Path | None, workers: int | None = None, **roles: bool) -> None:
    """Start servers; every start-up problem is one line and exit code 2."""
    from jitgate import runner  # noqa: PLC0415 - servers load only for the commands that run them

    settings = _settings(config)
    try:
        runner.run(settings, on_ready=_walkthrough, workers=workers, **roles)
    except JitgateError as exc:
        fail(exc.detail, code=2)
    except OSError as exc:
        fail(f"cannot start: {exc}", code=2)


@app.command()
def up(
    config: ConfigOption = None,
    demo: Annotated[
        bool, typer.Option(help="start the demo upstream, principals and policy")
    ] = False,
    workers: WorkersOption = None,
) -> None:
    """Start the control plane and the gateway in one process (embedded default: SQLite).

    With --workers N above 1, the gateway runs in N worker processes beside it (default 1).
    """
    _run(config, workers, demo=demo)


@serve_app.command("control")
def serve_control(config: ConfigOption = None) -> None:
    """Run the control plane only."""
    _run(config, gateway=False)


@serve_app.command("gateway")
def serve_gateway(config: ConfigOption = None, workers: WorkersOption = None) -> None:
    """Run the gateway only, in --workers N processes (default: one per CPU)."""
    _run(config, workers, control=False)


def _token_from_file(path: Path, key: str | None) -> str:
    try:
        text = path.read_text().strip()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")
    if key is None:
        return text
    try:
        value = json.loads(text)[key]
    except (ValueError, KeyError, TypeError):
        fail(f"{path} has no token named {key!r}")
    return str(value)


@app.command()
def login(
    ctx: typer.Context,
    server: Annotated[str, typer.Option(help="control-plane URL")],
    token: Annotated[str | None, typer.Option(help="principal token (jgp_…)")] = None,
    token_file: Annotated[
        Path | None, typer.Option(help="read the token from a file (raw, or JSON with --key)")
    ] = None,
    key: Annotated[str | None, typer.Option(help="the token's name in a JSON token file")] = None,
) -> None:
    """Check a principal token against the server and store it (file mode 0600)."""
    if (token is None) == (token_file is None):
        fail("give exactly one of --token or --token-file", code=2)
    token = token if token is not None else _token_from_file(token_file, key)  # type: ignore[arg-type]
    client = Client(server=server.rstrip("/"), token=token)
    me = client.call("GET", "/v1/me")
    path = save_profile(ctx.meta["profile"], server, token)
    typer.echo(f"logged in to {server} as {me['id']} (profile {ctx.meta['profile']}, {path})")


@app.command()
def whoami(ctx: typer.Context) -> None:
    """Show the principal the CLI acts as."""
    typer.echo(json.dumps(ctx.obj.call("GET", "/v1/me"), indent=2))
