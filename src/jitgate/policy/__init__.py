"""Access as code: load a policy file, and decide requests under it.

The public surface is small: :func:`load_policy` / :func:`parse_policy` turn YAML into a
validated :class:`Policy` (or a :class:`~jitgate.errors.ConfigError` naming file and line),
and :func:`evaluate` turns a :class:`Subject` into an :class:`Evaluation` (the decision and
the per-rule trace). :data:`DEMO_POLICY_PATH` is the policy ``jitgate up --demo`` uses.
"""

from __future__ import annotations

from pathlib import Path

from jitgate.policy.engine import (
    Evaluation,
    RuleTrace,
    Subject,
    eligible_steps,
    evaluate,
    steps_met,
)
from jitgate.policy.loader import load_policy, parse_policy
from jitgate.policy.model import Approval, Defaults, Policy, Requesters, Rule

DEMO_POLICY_PATH = Path(__file__).parent / "demo.yaml"

__all__ = [
    "DEMO_POLICY_PATH",
    "Approval",
    "Defaults",
    "Evaluation",
    "Policy",
    "Requesters",
    "Rule",
    "RuleTrace",
    "Subject",
    "eligible_steps",
    "evaluate",
    "load_policy",
    "parse_policy",
    "steps_met",
]
