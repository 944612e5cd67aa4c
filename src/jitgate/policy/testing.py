"""Decision tables: the decisions an operator expects of a policy, checked offline.

A table (YAML, documented in docs/policy-tools.md) defines principals and APIs as the
policy would see them, then cases: a request, and what the policy must decide about it.
``jitgate policy test POLICY TABLE`` runs it, typically in the operator's CI.

Guarantees:

* A table is read as strictly as a policy, by the same YAML machinery: a bad table is a
  :class:`~jitgate.errors.ConfigError` with one ``<table>:<line>: <key path>: <problem>``
  line per problem (unknown keys, wrong types, a case naming a principal or an API the
  table does not define, a time without a time zone, duplicate case names, …).
* Nothing is guessed: every case names its principal, API, scopes and duration (itself
  or through ``defaults``); the only default values are the documented ones (reason
  ``policy test``, no ticket, no recent denials, the time of the run when ``at`` is
  absent).
* Running is pure: each case becomes a :class:`~jitgate.policy.engine.Subject` decided
  by :func:`~jitgate.policy.engine.evaluate`; a case passes when every expectation it
  states holds, and each one that does not is a reason, so a failure says what differed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from jitgate.domain.models import (
    Api,
    Decision,
    Injection,
    InjectionKind,
    Outcome,
    Principal,
    PrincipalKind,
)
from jitgate.domain.scopes import Scope
from jitgate.errors import ConfigError
from jitgate.policy.engine import Evaluation, Subject, evaluate
from jitgate.policy.loader import (
    DurationIn,
    KeyPath,
    ScopeIn,
    Word,
    compose_yaml,
    error_at,
    report_errors,
)
from jitgate.policy.model import Policy

DEFAULT_REASON = "policy test"
MAX_CASES = 5_000
_MAX_REPORTED = 20
_UNUSED_URL = "https://unused.invalid"  # a table's API is never called
_T = TypeVar("_T")


def load_table(path: Path) -> Table:
    """Read and validate the decision table at ``path``."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the table: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: the table is not UTF-8 text") from exc
    return parse_table(text, str(path))


def parse_table(text: str, source: str) -> Table:
    """Validate table ``text``; ``source`` names it in errors (usually the file name)."""
    data, lines = compose_yaml(text, source, what="table")
    if not isinstance(data, dict):
        raise error_at(source, lines[()], (), "a table is a mapping with principals, apis, cases")
    try:
        document = _TableIn.model_validate(data)
    except ValidationError as exc:
        raise report_errors(exc, lines, source) from exc
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return _Resolver(document, lines, source).table(digest)


@dataclass(frozen=True, slots=True)
class StepExpectation:
    """An expected approval step; a field left ``None`` is not checked."""

    name: str | None = None
    count: int | None = None
    groups: frozenset[str] | None = None
    principals: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Expectation:
    """What a case expects; a field left ``None`` (``rule``: ``checks_rule`` false) is not
    checked. ``rule`` None with ``checks_rule`` means "decided by no rule"."""

    outcome: Outcome | None = None
    checks_rule: bool = False
    rule: str | None = None
    risk_below: int | None = None
    risk_at_least: int | None = None
    approvals_required: int | None = None
    steps: tuple[StepExpectation, ...] | None = None
    break_glass: bool | None = None
    reason_contains: str | None = None

    def failures(self, decision: Decision) -> tuple[str, ...]:
        """One line per expectation that ``decision`` does not meet."""
        found: list[str] = []
        if self.outcome is not None and decision.outcome is not self.outcome:
            found.append(f"outcome: expected {self.outcome.value}, got {decision.outcome.value}")
        if self.checks_rule and decision.rule != self.rule:
            found.append(f"rule: expected {_rule(self.rule)}, got {_rule(decision.rule)}")
        score = decision.risk.score
        if self.risk_below is not None and score >= self.risk_below:
            found.append(f"risk: expected below {self.risk_below}, got {score}")
        if self.risk_at_least is not None and score < self.risk_at_least:
            found.append(f"risk: expected at least {self.risk_at_least}, got {score}")
        required = decision.approvals_required
        if self.approvals_required is not None and required != self.approvals_required:
            found.append(f"approvals required: expected {self.approvals_required}, got {required}")
        if self.steps is not None and not _steps_match(self.steps, decision):
            found.append(
                f"steps: expected [{', '.join(_expected_step(s) for s in self.steps)}], "
                f"got [{', '.join(_actual_step(decision, i) for i in range(len(decision.steps)))}]"
            )
        if self.break_glass is not None and decision.break_glass != self.break_glass:
            found.append(f"break glass: expected {self.break_glass}, got {decision.break_glass}")
        wanted = self.reason_contains
        if wanted is not None and not any(wanted in reason for reason in decision.reasons):
            found.append(f"reasons: none contains {wanted!r}")
        return tuple(found)


@dataclass(frozen=True, slots=True)
class Case:
    """One row of the table: a request as the policy would see it, and its expectation."""

    name: str
    line: int
    principal: Principal
    api: Api
    scopes: tuple[Scope, ...]
    duration: timedelta
    expect: Expectation
    reason: str = DEFAULT_REASON
    ticket: str | None = None
    starts_at: datetime | None = None
    at: datetime | None = None
    recent_denials: int = 0
    oidc: dict[str, str] | None = None
    extension: bool = False

    def subject(self, now: datetime) -> Subject:
        """The request, made at ``at`` (or at ``now`` when the case sets no time)."""
        return Subject(
            principal=self.principal,
            api=self.api,
            scopes=self.scopes,
            duration=self.duration,
            now=self.at or now,
            reason=self.reason,
            ticket=self.ticket,
            starts_at=self.starts_at,
            recent_denials=self.recent_denials,
            oidc=None if self.oidc is None else dict(self.oidc),
            extension=self.extension,
        )


@dataclass(frozen=True, slots=True)
class Table:
    source: str
    digest: str  # SHA-256 of the table's text, for the record of a CI run
    cases: tuple[Case, ...]


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: Case
    evaluation: Evaluation
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures


def run_table(policy: Policy, table: Table, now: datetime) -> list[CaseResult]:
    """Decide every case under ``policy``, in the table's order; ``now`` is the time of
    the cases that set no ``at``."""
    results = []
    for case in table.cases:
        evaluation = evaluate(policy, case.subject(now))
        results.append(CaseResult(case, evaluation, case.expect.failures(evaluation.decision)))
    return results


def summary(decision: Decision) -> str:
    """The decision in a few words: ``needs_approval (rule x, 2 approvals, risk 55)``."""
    parts = [f"rule {_rule(decision.rule)}"]
    if decision.outcome is Outcome.NEEDS_APPROVAL:
        parts.append(f"{decision.approvals_required} approval(s)")
    if decision.break_glass:
        parts.append("break glass")
    parts.append(f"risk {decision.risk.score}")
    return f"{decision.outcome.value} ({', '.join(parts)})"


def _rule(name: str | None) -> str:
    return "none" if name is None else name


def _steps_match(expected: tuple[StepExpectation, ...], decision: Decision) -> bool:
    if len(expected) != len(decision.steps):
        return False
    return all(
        (want.name is None or want.name == have.name)
        and (want.count is None or want.count == have.count)
        and (want.groups is None or want.groups == have.groups)
        and (want.principals is None or want.principals == have.principals)
        for want, have in zip(expected, decision.steps, strict=True)
    )


def _expected_step(step: StepExpectation) -> str:
    who = sorted(step.groups or ()) + [f"principal {p}" for p in sorted(step.principals or ())]
    count = "?" if step.count is None else str(step.count)
    return f"{step.name or '?'}: {count} from {', '.join(who) or '?'}"


def _actual_step(decision: Decision, index: int) -> str:
    step = decision.steps[index]
    who = sorted(step.groups) + [f"principal {p}" for p in sorted(step.principals)]
    return f"{step.name}: {step.count} from {', '.join(who)}"


# --- schema ------------------------------------------------------------------------------


def _time(value: object) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as exc:
            raise PydanticCustomError(
                "time", f"invalid time {value!r}: use ISO 8601, e.g. 2026-01-05T10:00:00Z"
            ) from exc
    if not isinstance(value, datetime):
        raise PydanticCustomError(
            "time", f"expected a date and time such as 2026-01-05T10:00:00Z, got {value!r}"
        )
    if value.tzinfo is None:
        raise PydanticCustomError(
            "time", f"{value.isoformat()} needs a time zone (e.g. 2026-01-05T10:00:00Z)"
        )
    return value


TimeIn = Annotated[datetime, PlainValidator(_time)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _PrincipalIn(_In):
    kind: Literal["user", "service"] = "user"
    groups: list[Word] = Field(default_factory=list)
    attributes: dict[str, Any] = Field(default_factory=dict)
    disabled: bool = False


class _ApiIn(_In):
    environment: Word = "prod"
    owners: list[Word] = Field(default_factory=list)


class _FromIn(_In):
    groups: list[Word] = Field(default_factory=list)
    principals: list[Word] = Field(default_factory=list)


class _StepIn(_In):
    """An expected step, written as in the policy; only the keys given are checked."""

    name: str | None = None
    count: int | None = Field(default=None, ge=1)
    from_: _FromIn | None = Field(default=None, alias="from")

    def expectation(self) -> StepExpectation:
        who = self.from_
        return StepExpectation(
            name=self.name,
            count=self.count,
            groups=None if who is None else frozenset(who.groups),
            principals=None if who is None else frozenset(who.principals),
        )


class _ExpectIn(_In):
    outcome: Literal["approve", "deny", "needs_approval"] | None = None
    rule: str | None = None
    risk_below: int | None = Field(default=None, ge=1, le=101)
    risk_at_least: int | None = Field(default=None, ge=0, le=100)
    approvals_required: int | None = Field(default=None, ge=0)
    steps: list[_StepIn] | None = None
    break_glass: bool | None = None
    reason_contains: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _something(self) -> Self:
        if not self.model_fields_set:
            raise PydanticCustomError(
                "expect", "expect at least one of outcome, rule, risk_below, … (see the docs)"
            )
        return self

    def expectation(self) -> Expectation:
        return Expectation(
            outcome=None if self.outcome is None else Outcome(self.outcome),
            checks_rule="rule" in self.model_fields_set,
            rule=self.rule,
            risk_below=self.risk_below,
            risk_at_least=self.risk_at_least,
            approvals_required=self.approvals_required,
            steps=None if self.steps is None else tuple(s.expectation() for s in self.steps),
            break_glass=self.break_glass,
            reason_contains=self.reason_contains,
        )


class _FieldsIn(_In):
    """What a case asks; in ``defaults``, what every case asks unless it says otherwise."""

    principal: str | None = None
    api: str | None = None
    scopes: list[ScopeIn] | None = Field(default=None, min_length=1, max_length=20)
    for_: DurationIn | None = Field(default=None, alias="for")
    reason: str | None = Field(default=None, max_length=1000)
    ticket: str | None = Field(default=None, min_length=1, max_length=200)
    starts_at: TimeIn | None = None
    at: TimeIn | None = None
    recent_denials: int | None = Field(default=None, ge=0, le=1000)
    oidc: dict[str, str] | None = None
    extension: bool | None = None


class _CaseIn(_FieldsIn):
    name: str = Field(min_length=1, max_length=200)
    expect: _ExpectIn


class _TableIn(_In):
    principals: dict[Word, _PrincipalIn] = Field(default_factory=dict)
    apis: dict[Word, _ApiIn] = Field(default_factory=dict)
    defaults: _FieldsIn = Field(default_factory=_FieldsIn)
    cases: list[_CaseIn] = Field(min_length=1, max_length=MAX_CASES)


class _Resolver:
    """Validated table -> cases, each with its defaults applied and its names resolved;
    every problem is collected with its line."""

    def __init__(self, document: _TableIn, lines: dict[KeyPath, int], source: str) -> None:
        self.document = document
        self.lines = lines
        self.source = source
        self.problems: list[tuple[int, str]] = []
        self.principals = {
            pid: Principal(
                pid,
                PrincipalKind(p.kind),
                pid,
                frozenset(p.groups),
                dict(p.attributes),
                disabled=p.disabled,
            )
            for pid, p in document.principals.items()
        }
        self.apis = {
            name: Api(
                name,
                _UNUSED_URL,
                Injection(InjectionKind.HEADER),
                a.environment,
                frozenset(a.owners),
            )
            for name, a in document.apis.items()
        }

    def table(self, digest: str) -> Table:
        cases: list[Case] = []
        first_seen: dict[str, int] = {}
        for index, case_in in enumerate(self.document.cases):
            where: KeyPath = ("cases", index, "name")
            if case_in.name in first_seen:
                first = first_seen[case_in.name]
                self._problem(
                    where, f"duplicate case name {case_in.name!r} (first at line {first})"
                )
            first_seen.setdefault(case_in.name, self.lines[where])
            case = self._case(index, case_in)
            if case is not None:
                cases.append(case)
        if self.problems:
            # A bad ``defaults`` entry is met by every case: say it once.
            unique = sorted(set(self.problems))
            raise ConfigError("\n".join(detail for _, detail in unique[:_MAX_REPORTED]))
        return Table(self.source, digest, tuple(cases))

    def _case(self, index: int, case: _CaseIn) -> Case | None:
        defaults = self.document.defaults
        principal = self._named(index, case, "principal", self.principals, "principals")
        api = self._named(index, case, "api", self.apis, "apis")
        scopes = case.scopes if case.scopes is not None else defaults.scopes
        duration = case.for_ if case.for_ is not None else defaults.for_
        if scopes is None:
            self._missing(index, "scopes")
        if duration is None:
            self._missing(index, "for")
        if principal is None or api is None or scopes is None or duration is None:
            return None
        return Case(
            name=case.name,
            line=self.lines[("cases", index)],
            principal=principal,
            api=api,
            scopes=tuple(scopes),
            duration=duration,
            expect=case.expect.expectation(),
            reason=_first(case.reason, defaults.reason, DEFAULT_REASON),
            ticket=_first(case.ticket, defaults.ticket, None),
            starts_at=_first(case.starts_at, defaults.starts_at, None),
            at=_first(case.at, defaults.at, None),
            recent_denials=_first(case.recent_denials, defaults.recent_denials, 0),
            oidc=_first(case.oidc, defaults.oidc, None),
            extension=_first(case.extension, defaults.extension, False),
        )

    def _named(
        self,
        index: int,
        case: _CaseIn,
        key: Literal["principal", "api"],
        known: Mapping[str, _T],
        section: str,
    ) -> _T | None:
        own = getattr(case, key)
        name = own if own is not None else getattr(self.document.defaults, key)
        if name is None:
            self._missing(index, key)
            return None
        if name not in known:
            where: KeyPath = ("cases", index, key) if own is not None else ("defaults", key)
            listed = ", ".join(sorted(known)) or "none"
            self._problem(where, f"{name!r} is not defined under {section} (defined: {listed})")
            return None
        return known[name]

    def _missing(self, index: int, key: str) -> None:
        line = self.lines[("cases", index)]
        detail = error_at(
            self.source, line, ("cases", index, key), "is missing (give it here or in defaults)"
        ).detail
        self.problems.append((line, detail))

    def _problem(self, where: KeyPath, problem: str) -> None:
        line = self.lines[where]
        self.problems.append((line, error_at(self.source, line, where, problem).detail))


def _first(own: _T | None, default: _T | None, fallback: _T) -> _T:
    if own is not None:
        return own
    return default if default is not None else fallback
