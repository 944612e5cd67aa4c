"""The policy loader: what it accepts, and the file:line it names for what it refuses."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import pytest

from jitgate.domain.models import ApprovalStep
from jitgate.domain.scopes import parse_scope
from jitgate.errors import ConfigError
from jitgate.policy import DEMO_POLICY_PATH, load_policy, parse_policy
from jitgate.policy.model import AUTO, Requesters

SPEC_LIKE = """\
version: 1
defaults: {max_duration: 1h, pending_ttl: 24h}
rules:
  - name: read-only-self-service
    description: Engineers read payments and billing on their own.
    requesters: {groups: [engineering]}
    apis: [payments, billing]
    scopes: ["GET /v1/**"]
    max_duration: 1h
    approval: auto
  - name: payments-writes
    requesters: {groups: [engineering], principals: [dana]}
    apis: [payments]
    scopes: ["POST,PUT,PATCH,DELETE /v1/**"]
    max_duration: 30m
    approval: {count: 2, from: {groups: [payments-owners]}}
  - name: sre-anything
    requesters: {groups: [sre]}
    apis: ["*"]
    scopes: ["* /**"]
    approval: {count: 1, from: {groups: [sre-leads, security]}}
"""

# One valid rule; the cases below break it in one place each.
RULE = """\
version: 1
rules:
  - name: reads
    requesters: {groups: [engineering]}
    apis: [demo]
    scopes: ["GET /**"]
    approval: auto
"""


def test_demo_policy_is_the_spec_demo() -> None:
    policy = load_policy(DEMO_POLICY_PATH)
    reads, writes, approvers_low_risk, approvers_two_step = policy.rules
    assert reads.requesters == Requesters(groups=frozenset({"engineering"}))
    assert reads.apis == frozenset({"demo"})
    assert reads.scopes == (parse_scope("GET /**"),)
    assert reads.max_duration == timedelta(minutes=15)
    assert reads.approval == AUTO
    assert writes.requesters == Requesters(groups=frozenset({"engineering"}))
    assert writes.scopes == (parse_scope("POST,PUT,PATCH,DELETE /**"),)
    assert writes.max_duration == timedelta(hours=1)
    assert [step.spec for step in writes.approval.steps] == [
        ApprovalStep("approval", 1, frozenset({"approvers"}))
    ]
    assert policy.defaults.pending_ttl == timedelta(hours=24)
    # Beyond the SPEC fixture, only for approvers: auto below a risk threshold, else two steps.
    assert approvers_low_risk.when is not None
    assert approvers_low_risk.when.source == "risk.score < 40"
    assert [step.spec for step in approvers_two_step.approval.steps] == [
        ApprovalStep("peer", 1, frozenset({"approvers"})),
        ApprovalStep("admin", 1, principals=frozenset({"admin"})),
    ]


def test_spec_like_policy_loads_in_order_with_lines() -> None:
    policy = parse_policy(SPEC_LIKE, "policy.yaml")
    assert [(r.name, r.line) for r in policy.rules] == [
        ("read-only-self-service", 4),
        ("payments-writes", 11),
        ("sre-anything", 17),
    ]
    first, second, third = policy.rules
    assert first.description == "Engineers read payments and billing on their own."
    assert second.requesters.principals == frozenset({"dana"})
    assert second.max_duration == timedelta(minutes=30)
    assert [step.spec for step in second.approval.steps] == [
        ApprovalStep("approval", 2, frozenset({"payments-owners"}))
    ]
    assert third.apis == frozenset({"*"})
    assert third.max_duration == timedelta(hours=1)  # from defaults
    assert policy.version == 1
    assert policy.source == "policy.yaml"


def test_defaults_are_optional() -> None:
    policy = parse_policy(RULE, "p.yaml")
    assert policy.defaults.max_duration == timedelta(hours=1)
    assert policy.defaults.pending_ttl == timedelta(hours=24)
    assert policy.rules[0].max_duration == timedelta(hours=1)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("1h30m", timedelta(minutes=90)),
        ("600", timedelta(minutes=10)),
        ("'600'", timedelta(seconds=600)),
    ],
)
def test_durations_use_the_common_grammar(value: str, expected: timedelta) -> None:
    policy = parse_policy(RULE + f"    max_duration: {value}\n", "p.yaml")
    assert policy.rules[0].max_duration == expected


def test_digest_is_sha256_of_the_file_bytes(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(SPEC_LIKE, encoding="utf-8")
    loaded = load_policy(path)
    assert loaded.digest == hashlib.sha256(SPEC_LIKE.encode()).hexdigest()
    assert loaded.digest == parse_policy(SPEC_LIKE, "x").digest
    assert loaded.source == str(path)
    assert parse_policy(SPEC_LIKE + "# edit\n", "x").digest != loaded.digest


def test_anchors_and_aliases_are_allowed() -> None:
    text = RULE.replace("{groups: [engineering]}", "&eng {groups: [engineering]}") + (
        "  - name: more\n"
        "    requesters: *eng\n"
        "    apis: [other]\n"
        "    scopes: ['GET /**']\n"
        "    approval: auto\n"
    )
    policy = parse_policy(text, "p.yaml")
    assert policy.rules[1].requesters == policy.rules[0].requesters


def _with(old: str, new: str) -> str:
    assert old in RULE
    return RULE.replace(old, new)


REJECTED = [
    ("unknown key", RULE + "    colour: red\n", "p.yaml:8: rules[0].colour: unknown key"),
    ("unknown top key", "extra: 1\n" + RULE, "p.yaml:1: extra: unknown key"),
    (
        "bad scope",
        _with('"GET /**"', '"GTE /x"'),
        "p.yaml:6: rules[0].scopes[0]: invalid scope 'GTE /x': unknown method 'GTE'",
    ),
    (
        "** not last",
        _with('"GET /**"', '"GET /**/x"'),
        "p.yaml:6: rules[0].scopes[0]: invalid scope 'GET /**/x': '**' may only end a pattern",
    ),
    ("scope not text", _with('"GET /**"', "42"), "p.yaml:6: rules[0].scopes[0]: a scope is text"),
    (
        "no scopes",
        _with('["GET /**"]', "[]"),
        "p.yaml:6: rules[0].scopes: list should have at least 1",
    ),
    (
        "bad duration",
        RULE + "    max_duration: 5 minutes\n",
        "p.yaml:8: rules[0].max_duration: invalid duration '5 minutes'",
    ),
    (
        "bad default duration",
        _with("version: 1\n", "version: 1\ndefaults:\n  pending_ttl: 0s\n"),
        "p.yaml:3: defaults.pending_ttl: invalid duration '0s': must be positive",
    ),
    (
        "duplicate names",
        RULE + RULE.split("rules:\n")[1],
        "p.yaml:8: rules[1].name: duplicate rule name 'reads' (first at line 3)",
    ),
    (
        "duplicate yaml key",
        RULE + "    apis: [other]\n",
        "p.yaml:8: rules[0].apis: duplicate key (first at line 5)",
    ),
    (
        "missing name",
        _with("  - name: reads\n    requesters", "  - requesters"),
        "p.yaml:3: rules[0].name: is missing (required)",
    ),
    (
        "bad name",
        _with("name: reads", "name: Reads All"),
        "p.yaml:3: rules[0].name: 'Reads All' is not a slug",
    ),
    (
        "count 0",
        _with("approval: auto", "approval: {count: 0, from: {groups: [approvers]}}"),
        "p.yaml:7: rules[0].approval.count: input should be greater than or equal to 1",
    ),
    (
        "approval without groups",
        _with("approval: auto", "approval:\n      count: 1\n      from: {groups: []}"),
        "p.yaml:9: rules[0].approval.from: name at least one group or principal",
    ),
    (
        "count as text",
        _with("approval: auto", "approval: {count: '2', from: {groups: [a]}}"),
        "p.yaml:7: rules[0].approval.count: input should be a valid integer",
    ),
    (
        "unknown approval",
        _with("approval: auto", "approval: manual"),
        "p.yaml:7: rules[0].approval: unknown approval 'manual'",
    ),
    (
        "no requesters",
        _with("{groups: [engineering]}", "{groups: []}"),
        "p.yaml:4: rules[0].requesters: name at least one group, principal or oidc identity",
    ),
    (
        "star mixed",
        _with("[demo]", '["*", demo]'),
        "p.yaml:5: rules[0].apis: '*' already means every API",
    ),
    (
        "when: syntax error",
        RULE + "    when: 'request.duration <= '\n",
        "p.yaml:8: rules[0].when: invalid CEL: at 1:21: Syntax error",
    ),
    (
        "when: unknown variable",
        RULE + "    when: 'requets.duration < duration(\"1h\")'\n",
        "p.yaml:8: rules[0].when: unknown variable 'requets'",
    ),
    (
        "when: unknown function",
        RULE + "    when: 'lower(request.reason) == \"x\"'\n",
        "p.yaml:8: rules[0].when: unknown function 'lower'",
    ),
    (
        "when: not a boolean",
        RULE + "    when: 'risk.score + 1'\n",
        "p.yaml:8: rules[0].when: the condition gave 1, not true or false",
    ),
    (
        "when: type error",
        RULE + "    when: 'risk.score < \"40\"'\n",
        "p.yaml:8: rules[0].when: no such overload: the operation is not defined",
    ),
    (
        "reviewer variable outside a step",
        RULE + "    when: 'reviewer.id == \"bob\"'\n",
        "p.yaml:8: rules[0].when: unknown variable 'reviewer'",
    ),
    (
        "bad reason_pattern",
        RULE + "    reason_pattern: '[A-Z'\n",
        "p.yaml:8: rules[0].reason_pattern: invalid regular expression '[A-Z'",
    ),
    (
        "unknown time zone",
        _with("version: 1\n", "version: 1\ndefaults: {time_zone: Mars/Olympus}\n"),
        "p.yaml:2: defaults.time_zone: unknown time zone 'Mars/Olympus'",
    ),
    (
        "oidc issuer not https",
        _with("{groups: [engineering]}", "{oidc: {issuer: 'http://x'}}"),
        "p.yaml:4: rules[0].requesters.oidc.issuer: string should match pattern",
    ),
    (
        "step without approvers",
        _with("approval: auto", "approval: {steps: [{count: 1, from: {}}]}"),
        "p.yaml:7: rules[0].approval.steps[0].from: name at least one group or principal",
    ),
    (
        "duplicate step names",
        _with(
            "approval: auto",
            "approval: {steps: [{name: a, count: 1, from: {groups: [x]}},"
            " {name: a, count: 1, from: {groups: [y]}}]}",
        ),
        "p.yaml:7: rules[0].approval.steps: step names must be unique",
    ),
    (
        "extensions percentage",
        RULE + "    extensions: {max: 1, min_elapsed: 150%}\n",
        "p.yaml:8: rules[0].extensions.min_elapsed: expected a percentage such as 50%",
    ),
    (
        "risk weight out of range",
        _with("version: 1\n", "version: 1\nrisk: {writes: 500}\n"),
        "p.yaml:2: risk.writes: input should be less than or equal to 100",
    ),
    (
        "version 2",
        _with("version: 1", "version: 2"),
        "p.yaml:1: version: unsupported policy version 2",
    ),
    ("version missing", _with("version: 1\n", ""), "p.yaml:1: version: is missing (required)"),
    ("rules missing", "version: 1\n", "p.yaml:1: rules: is missing (required)"),
    ("empty file", "", "p.yaml:1: the policy file is empty"),
    ("only comments", "# nothing yet\n", "p.yaml:1: the policy file is empty"),
    ("not a mapping", "- version: 1\n", "p.yaml:1: a policy is a mapping"),
    (
        "rule not a mapping",
        "version: 1\nrules: [reads]\n",
        "p.yaml:2: rules[0]: expected a mapping",
    ),
    (
        "yaml syntax",
        _with("[demo]", "[demo"),
        "p.yaml:6: invalid YAML: while parsing a flow sequence",
    ),
    ("yaml tab", RULE + "\tbad: 1\n", "p.yaml:8: invalid YAML"),
    ("two documents", RULE + "---\n" + RULE, "p.yaml:8: invalid YAML: expected a single document"),
    ("merge key", RULE + "    <<: {description: x}\n", "p.yaml:8: rules[0]: YAML merge keys"),
    ("python tag", "version: !!python/name:os.system\n", "p.yaml:1: invalid YAML"),
    ("non-text key", RULE + "    1: x\n", "p.yaml:8: rules[0]: keys must be text"),
    ("NUL byte", "version: 1\n\x00", "p.yaml:2: unacceptable character #x0000"),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED]
)
def test_rejects_with_file_and_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_policy(text, "p.yaml")
    assert caught.value.detail.startswith(expected), caught.value.detail


def test_reports_every_problem_one_per_line_in_file_order() -> None:
    text = _with("version: 1", "version: 3").replace("[demo]", "[]") + "    colour: red\n"
    with pytest.raises(ConfigError) as caught:
        parse_policy(text, "p.yaml")
    lines = caught.value.detail.splitlines()
    assert [line.split(": ")[0] for line in lines] == ["p.yaml:1", "p.yaml:5", "p.yaml:8"]
    assert caught.value.code == "config"


def test_alias_bomb_is_refused_quickly() -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 7)]
    with pytest.raises(ConfigError, match="more than 100000 YAML nodes"):
        parse_policy("\n".join(levels) + "\n", "p.yaml")


def test_unreadable_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read the policy file"):
        load_policy(missing)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"version: 1\n\xff\xfe")
    with pytest.raises(ConfigError, match=r"bin\.yaml: the policy file is not UTF-8"):
        load_policy(binary)
