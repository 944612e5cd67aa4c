"""``jitgate policy reload``: the server loads its policy_file again."""

from __future__ import annotations

import json
from pathlib import Path

from jitgate.policy import load_policy
from jitgate.services.context import Context
from tests.cli.conftest import Cli, one_line_error
from tests.services.test_policy_reload import BAD, BAD_SCOPE_LINE, READS, WRITES


def test_policy_reload_prints_the_new_digest_or_the_error(
    cli: Cli, ctx: Context, tmp_path: Path
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(READS)
    ctx.policy_file = path
    ctx.replace_policy(load_policy(path))
    old = ctx.policy.digest
    assert cli.ok("admin", "policy", "reload") == f"policy unchanged: digest {old}\n"
    path.write_text(READS + WRITES)
    new = load_policy(path).digest
    assert cli.ok("admin", "policy", "reload") == (
        f"policy reloaded: digest {new} (was {old}), 2 rule(s)\n"
    )
    assert json.loads(cli.ok("admin", "policy", "reload", "-o", "json"))["digest"] == new
    path.write_text(BAD)
    error = one_line_error(cli("admin", "policy", "reload"))
    assert f"error: 422: {path}:{BAD_SCOPE_LINE}: " in error
    assert error.endswith("[policy-rejected]")
    assert ctx.policy.digest == new
    assert "not-admin" in one_line_error(cli("alice", "policy", "reload"))
