"""The CLI's connection to a control plane: profiles, the HTTP client, error display.

``jitgate login`` stores ``{server, token}`` under a profile name in
``~/.config/jitgate/cli.json`` (or ``$JITGATE_CLI_CONFIG``), mode 0600. The server and
token can also come from ``--server``/``--token`` or ``JITGATE_SERVER`` /
``JITGATE_PRINCIPAL_TOKEN``, which win over the file.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import httpx
import typer

DEFAULT_SERVER = "http://127.0.0.1:8700"


def config_path() -> Path:
    if env := os.environ.get("JITGATE_CLI_CONFIG"):
        return Path(env)
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "jitgate" / "cli.json"


def load_profiles() -> dict[str, Any]:
    path = config_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"profiles": {}}
    except (OSError, ValueError) as exc:
        fail(f"cannot read {path}: {exc}")
    if not isinstance(data, dict) or not isinstance(data.get("profiles"), dict):
        fail(f"{path} is not a jitgate CLI configuration; delete it and log in again")
    return data


def save_profile(name: str, server: str, token: str) -> Path:
    # Imported here: it pulls in the storage layer, which costs every CLI call ~1 s.
    from jitgate.services.bootstrap import write_private_file  # noqa: PLC0415

    data = load_profiles()
    data["profiles"][name] = {"server": server.rstrip("/"), "token": token}
    path = config_path()
    write_private_file(path, json.dumps(data, indent=2) + "\n")
    return path


def fail(message: str, code: int = 1) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@dataclass
class Client:
    server: str
    token: str | None
    profile: str = "default"

    @classmethod
    def from_options(cls, profile: str, server: str | None, token: str | None) -> Client:
        stored = load_profiles()["profiles"].get(profile, {})
        server = server or os.environ.get("JITGATE_SERVER") or stored.get("server")
        token = token or os.environ.get("JITGATE_PRINCIPAL_TOKEN") or stored.get("token")
        return cls(server=(server or DEFAULT_SERVER).rstrip("/"), token=token, profile=profile)

    def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        ok: tuple[int, ...] = (200, 201, 204),
        idempotency_key: str | None = None,
    ) -> Any:
        """One API call; its JSON answer, or the server's problem printed and exit 1.

        With ``idempotency_key`` the call is sent with that ``Idempotency-Key`` and, as
        the server answers a repeat as it answered the first, retried once more on a
        network error (a lost answer must not file the request twice).
        """
        if not self.token:
            fail(
                f"not logged in (no profile {self.profile!r} in {config_path()}): run "
                f"'jitgate --profile {self.profile} login --server URL --token jgp_…' first"
            )
        headers = {"Authorization": f"Bearer {self.token}"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        attempts = 2 if idempotency_key is not None else 1
        for attempt in range(1, attempts + 1):
            try:
                response = httpx.request(
                    method,
                    self.server + path,
                    json=json_body,
                    params=clean,
                    headers=headers,
                    timeout=30.0,
                )
                break
            except httpx.TransportError as exc:
                if attempt == attempts:
                    fail(f"cannot reach the jitgate server at {self.server}: {exc}")
            except httpx.HTTPError as exc:
                fail(f"cannot reach the jitgate server at {self.server}: {exc}")
        if response.status_code not in ok:
            show_problem(response)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()


def show_problem(response: httpx.Response) -> NoReturn:
    try:
        body = response.json()
        detail, code = body.get("detail", ""), body.get("code", "")
    except ValueError:
        detail, code = response.text[:200], ""
    suffix = f" [{code}]" if code else ""
    print(f"error: {response.status_code}: {detail}{suffix}", file=sys.stderr)
    raise typer.Exit(1)
