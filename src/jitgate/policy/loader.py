"""Policy file (YAML) -> validated :class:`~jitgate.policy.model.Policy`, or one clear error.

Guarantees:

* A bad file raises :class:`~jitgate.errors.ConfigError` whose detail has one line per
  problem, ordered by position, each ``<source>:<line>: <key path>: <what is wrong>``, e.g.
  ``policy.yaml:12: rules[1].scopes[0]: invalid scope 'GTE /x': unknown method 'GTE'``.
  Schema problems are all listed (up to 20); a YAML problem or a duplicate rule name stops
  at the first.
* Nothing is guessed or ignored: unknown keys, duplicate keys, duplicate rule names, YAML
  merge keys, custom tags and values of the wrong type (no ``"2"`` for ``2``) are errors.
* Every CEL expression (``when:`` of a rule or an approval step) is compiled here, so a
  typo, an unknown variable or function, or a non-boolean result is a load error with
  its line, never a surprise at request time.

The file is composed with PyYAML (keeping each node's line), turned into plain data with a
map from key path to line, validated by pydantic models, and each error's ``loc`` is mapped
back to the line of the deepest node that exists.
"""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from jitgate.domain.durations import parse_duration
from jitgate.domain.masks import MAX_MASKS, parse_mask
from jitgate.domain.models import ApprovalStep, Limits
from jitgate.domain.scopes import Scope, parse_scope
from jitgate.errors import ConfigError, InvalidInput
from jitgate.policy.conditions import (
    REVIEWER_VARIABLES,
    RULE_VARIABLES,
    Condition,
    compile_condition,
)
from jitgate.policy.model import (
    ANY_API,
    AUTO,
    BREAK_GLASS,
    NO_EXTENSIONS,
    Approval,
    Defaults,
    Extensions,
    Mode,
    Oidc,
    Policy,
    Requesters,
    Rule,
    Step,
)
from jitgate.policy.risk import RiskWeights

KeyPath = tuple[str | int, ...]

_MAX_NODES = 100_000  # aliases can make a small file expand exponentially
_MAX_REPORTED = 20
_SLUG = re.compile(r"[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?")
_STANDARD_TAGS = {"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}


def load_policy(path: Path) -> Policy:
    """Read and validate the policy file at ``path``; the digest covers its exact bytes."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the policy file: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: the policy file is not UTF-8 text") from exc
    return _parse(text, str(path), hashlib.sha256(raw).hexdigest())


def parse_policy(text: str, source: str) -> Policy:
    """Validate policy ``text``; ``source`` names it in errors (usually the file name)."""
    return _parse(text, source, hashlib.sha256(text.encode("utf-8")).hexdigest())


def _parse(text: str, source: str, digest: str) -> Policy:
    data, lines = compose_yaml(text, source)
    if not isinstance(data, dict):
        raise error_at(source, lines[()], (), "a policy is a mapping with version, defaults, rules")
    try:
        document = _PolicyIn.model_validate(data)
    except ValidationError as exc:
        raise report_errors(exc, lines, source) from exc
    first_seen: dict[str, int] = {}
    for index, rule in enumerate(document.rules):
        where = ("rules", index, "name")
        if rule.name in first_seen:
            problem = f"duplicate rule name {rule.name!r} (first at line {first_seen[rule.name]})"
            raise error_at(source, lines[where], where, problem)
        first_seen[rule.name] = lines[where]
    defaults = Defaults(
        document.defaults.max_duration,
        document.defaults.pending_ttl,
        document.defaults.time_zone,
    )
    rules = tuple(
        _rule(rule, lines[("rules", index)], defaults) for index, rule in enumerate(document.rules)
    )
    risk = document.risk.weights() if document.risk is not None else RiskWeights()
    return Policy(document.version, defaults, rules, source, digest, risk)


def _rule(rule: _RuleIn, line: int, defaults: Defaults) -> Rule:
    oidc = rule.requesters.oidc
    return Rule(
        name=rule.name,
        description=rule.description,
        requesters=Requesters(
            groups=frozenset(rule.requesters.groups),
            principals=frozenset(rule.requesters.principals),
            oidc=None if oidc is None else Oidc(oidc.issuer, tuple(sorted(oidc.claims.items()))),
        ),
        apis=frozenset(rule.apis),
        scopes=tuple(rule.scopes),
        max_duration=defaults.max_duration if rule.max_duration is None else rule.max_duration,
        approval=_approval(rule.approval),
        line=line,
        when=rule.when,
        reason_pattern=rule.reason_pattern,
        pending_ttl=rule.pending_ttl,
        extensions=(
            NO_EXTENSIONS
            if rule.extensions is None
            else Extensions(
                rule.extensions.max,
                rule.extensions.min_elapsed,
                rule.extensions.max_total,
            )
        ),
        notify={} if rule.notify is None else {"slack_channel": rule.notify.slack_channel},
        limits=Limits(
            max_calls=rule.max_calls,
            rate_calls=None if rule.rate_limit is None else rule.rate_limit[0],
            rate_window=None if rule.rate_limit is None else rule.rate_limit[1],
            idle_timeout=rule.idle_timeout,
        ),
        masks=tuple(dict.fromkeys(rule.mask)),
    )


def _approval(approval: str | _ApproversIn | _StepsIn) -> Approval:
    if approval == "auto":
        return AUTO
    if approval == "break_glass":
        return BREAK_GLASS
    assert isinstance(approval, _ApproversIn | _StepsIn)
    if isinstance(approval, _ApproversIn):
        # Already validated (its `when` compiled): construct, do not validate again.
        steps: list[_StepIn] = [_StepIn.model_construct(name="approval", **approval.step_fields())]
    else:
        steps = approval.steps
    return Approval(
        Mode.APPROVERS,
        tuple(
            Step(
                ApprovalStep(
                    name=step.name or f"step-{index + 1}",
                    count=step.count,
                    groups=frozenset(step.from_.groups),
                    principals=frozenset(step.from_.principals),
                    when=None if step.when is None else step.when.source,
                ),
                step.when,
            )
            for index, step in enumerate(steps)
        ),
        approval.deny_count,
    )


# --- YAML: plain data plus the line of every key path ------------------------------------


def compose_yaml(
    text: str, source: str, what: str = "policy file"
) -> tuple[Any, dict[KeyPath, int]]:
    """``text`` as plain data, and the line of every key path; a YAML problem, an unknown
    tag, a merge key or a duplicate key is a :class:`ConfigError` naming its line. Also
    used by :mod:`jitgate.policy.testing` for decision tables (``what`` names the file)."""
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)
        root = loader.get_single_node()
        if root is None:
            raise error_at(source, 1, (), f"the {what} is empty")
        walker = _Walker(loader, source)
        walker.lines[()] = root.start_mark.line + 1
        return walker.walk(root, ()), walker.lines
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = ", ".join(part for part in (exc.context, exc.problem) if part)
        raise error_at(source, line, (), f"invalid YAML: {problem or 'malformed'}") from exc
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise error_at(source, line, (), f"unacceptable character #x{exc.character:04x}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from exc
    except RecursionError as exc:  # the composer and the walker recurse once per level
        raise error_at(source, 1, (), f"the {what} nests too deeply") from exc
    finally:
        if loader is not None:
            loader.dispose()


class _Walker:
    """Composed YAML nodes -> plain data, recording the line of every key path."""

    def __init__(self, loader: yaml.SafeLoader, source: str) -> None:
        self.loader = loader
        self.source = source
        self.lines: dict[KeyPath, int] = {}
        self.budget = _MAX_NODES

    def walk(self, node: yaml.Node, path: KeyPath) -> Any:
        self.budget -= 1
        line = node.start_mark.line + 1
        if self.budget < 0:
            raise error_at(self.source, line, path, f"more than {_MAX_NODES} YAML nodes")
        if isinstance(node, yaml.ScalarNode):
            return self.loader.construct_object(node)
        if node.tag not in _STANDARD_TAGS:
            raise error_at(self.source, line, path, f"unsupported YAML tag {node.tag!r}")
        if isinstance(node, yaml.SequenceNode):
            items = []
            for index, item in enumerate(node.value):
                self.lines[(*path, index)] = item.start_mark.line + 1
                items.append(self.walk(item, (*path, index)))
            return items
        mapping: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise error_at(
                    self.source, key_line, path, "YAML merge keys (<<) are not supported"
                )
            is_scalar = isinstance(key_node, yaml.ScalarNode)
            key = self.loader.construct_object(key_node) if is_scalar else None
            if not isinstance(key, str):
                problem = f"keys must be text, got {key_node.value!r}"
                raise error_at(self.source, key_line, path, problem)
            where = (*path, key)
            if key in mapping:
                problem = f"duplicate key (first at line {self.lines[where]})"
                raise error_at(self.source, key_line, where, problem)
            self.lines[where] = key_line
            mapping[key] = self.walk(value_node, where)
        return mapping


# --- errors ------------------------------------------------------------------------------


def _dotted(path: KeyPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def error_at(source: str, line: int, path: KeyPath, problem: str) -> ConfigError:
    """``<source>:<line>: <key path>: <problem>``, the one shape of every load error."""
    where = f"{_dotted(path)}: " if path else ""
    return ConfigError(f"{source}:{line}: {where}{problem}")


def report_errors(exc: ValidationError, lines: dict[KeyPath, int], source: str) -> ConfigError:
    """Every error of ``exc`` located at its line (see :func:`compose_yaml`), in order."""
    located: list[tuple[int, str]] = []
    for error in exc.errors(include_url=False):
        # The approval union adds its tag after "approval"; it is not a key of the file.
        loc = [
            part
            for index, part in enumerate(error["loc"])
            if not (index and error["loc"][index - 1] == "approval" and part in _APPROVAL_TAGS)
        ]
        # Every key path of the file has a line; the deepest one present locates the error.
        depth = len(loc)
        while depth and tuple(loc[:depth]) not in lines:
            depth -= 1
        if error["type"] == "missing":
            problem = "is missing (required)"
        elif error["type"] == "extra_forbidden":
            problem = "unknown key"
        elif error["type"] in {"model_type", "model_attributes_type", "dict_type"}:
            problem = "expected a mapping (key: value)"
        else:
            message = error["msg"]
            problem = message[0].lower() + message[1:] if message[1:2].islower() else message
        line = lines[tuple(loc[:depth])]
        located.append((line, error_at(source, line, tuple(loc), problem).detail))
    located.sort(key=lambda item: item[0])
    return ConfigError("\n".join(detail for _, detail in located[:_MAX_REPORTED]))


# --- schema ------------------------------------------------------------------------------


def _problem(kind: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(kind, message)  # no context: braces in message stay literal


def _slug(value: str) -> str:
    if not _SLUG.fullmatch(value):
        raise _problem("slug", f"{value!r} is not a slug (a-z, 0-9, '-', '_'; at most 64)")
    return value


def _word(value: str) -> str:
    if not value or any(char.isspace() for char in value):
        raise _problem("name", f"{value!r} is not a name (non-empty, no spaces)")
    return value


def _duration(value: object) -> timedelta:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _problem("duration", f"invalid duration {value!r}: use 90s, 15m, 1h, 1h30m, …")
    try:
        return parse_duration(value)
    except InvalidInput as exc:
        raise _problem("duration", exc.detail) from exc


def _scope(value: object) -> Scope:
    if not isinstance(value, str):
        raise _problem("scope", f"a scope is text like 'GET /v1/**', got {value!r}")
    try:
        return parse_scope(value)
    except InvalidInput as exc:
        detail = exc.detail
        if not detail.startswith("invalid scope"):
            detail = f"invalid scope {value!r}: {detail}"
        raise _problem("scope", detail) from exc


def _approval_keyword(value: str) -> str:
    if value not in {"auto", "break_glass"}:
        raise _problem(
            "approval",
            f"unknown approval {value!r}: use auto, break_glass, {{count: N, from: …}} "
            "or {steps: [...]}",
        )
    return value


def _approval_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return "keyword"
    if isinstance(value, dict):
        return "steps" if "steps" in value else "approvers"
    return None


def _condition(variables: frozenset[str]) -> Any:
    def check(value: object) -> Condition:
        if not isinstance(value, str):
            raise _problem("condition", f"a condition is CEL text, got {value!r}")
        try:
            return compile_condition(value, variables)
        except ValueError as exc:
            raise _problem("condition", f"{exc} in {value!r}") from exc

    return PlainValidator(check)


def _pattern(value: object) -> re.Pattern[str]:
    if not isinstance(value, str) or not value or len(value) > 500:
        raise _problem("pattern", "reason_pattern is a regular expression of 1-500 characters")
    try:
        return re.compile(value)
    except re.error as exc:
        raise _problem("pattern", f"invalid regular expression {value!r}: {exc}") from exc


def _zone(value: object) -> ZoneInfo:
    if not isinstance(value, str):
        raise _problem("zone", f"a time zone is a name such as Europe/Paris, got {value!r}")
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise _problem("zone", f"unknown time zone {value!r} (use e.g. UTC, Europe/Paris)") from exc


_RATE = re.compile(r"([1-9][0-9]{0,6})\s*/\s*(s|sec|second|m|min|minute|h|hour)")
_RATE_WINDOWS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60}


def _rate(value: object) -> tuple[int, timedelta]:
    match = _RATE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise _problem("rate", f"expected a rate such as 10/s, 600/m or 1000/h, got {value!r}")
    calls, unit = match.groups()
    return int(calls), timedelta(seconds=_RATE_WINDOWS.get(unit, 3600))


def _mask(value: object) -> str:
    try:
        return parse_mask(value).text
    except InvalidInput as exc:
        raise _problem("mask", exc.detail) from None


def _percent(value: object) -> float:
    text = value if isinstance(value, str) else ""
    number = text.removesuffix("%")
    if not text.endswith("%") or not number.isdigit() or int(number) > 100:
        raise _problem("percent", f"expected a percentage such as 50%, got {value!r}")
    return int(number) / 100


_APPROVAL_TAGS = {"keyword", "approvers", "steps"}
Slug = Annotated[str, AfterValidator(_slug)]
Word = Annotated[str, AfterValidator(_word)]
DurationIn = Annotated[timedelta, PlainValidator(_duration)]
ScopeIn = Annotated[Scope, PlainValidator(_scope)]
WhenIn = Annotated[Condition, _condition(RULE_VARIABLES)]
ReviewerWhenIn = Annotated[Condition, _condition(REVIEWER_VARIABLES)]
PatternIn = Annotated[re.Pattern[str], PlainValidator(_pattern)]
ZoneIn = Annotated[ZoneInfo, PlainValidator(_zone)]
PercentIn = Annotated[float, PlainValidator(_percent)]
RateIn = Annotated[tuple[int, timedelta], PlainValidator(_rate)]
MaskIn = Annotated[str, PlainValidator(_mask)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _DefaultsIn(_In):
    max_duration: DurationIn = timedelta(hours=1)
    pending_ttl: DurationIn = timedelta(hours=24)
    time_zone: ZoneIn = Field(default_factory=lambda: ZoneInfo("UTC"))


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_WORKDAYS: list[Weekday] = ["mon", "tue", "wed", "thu", "fri"]


class _BusinessHoursIn(_In):
    days: list[Weekday] = Field(default_factory=lambda: list(_WORKDAYS))
    start: int = Field(default=8, ge=0, le=23)
    end: int = Field(default=19, ge=1, le=24)


class _RiskIn(_In):
    """Points per factor (see docs/policy.md); every key is optional."""

    writes: int = Field(default=30, ge=0, le=100)
    prod: int = Field(default=25, ge=0, le=100)
    prod_environments: list[Word] = Field(default_factory=lambda: ["prod"])
    broad_scope: int = Field(default=15, ge=0, le=100)
    long_duration: int = Field(default=10, ge=0, le=100)
    long_duration_after: DurationIn = timedelta(hours=1)
    very_long_duration: int = Field(default=20, ge=0, le=100)
    very_long_duration_after: DurationIn = timedelta(hours=8)
    off_hours: int = Field(default=10, ge=0, le=100)
    business_hours: _BusinessHoursIn = Field(default_factory=_BusinessHoursIn)
    recent_denial: int = Field(default=10, ge=0, le=100)
    recent_denials_max: int = Field(default=30, ge=0, le=100)
    recent_denials_window: DurationIn = timedelta(days=7)

    def weights(self) -> RiskWeights:
        days = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
        hours = self.business_hours
        return RiskWeights(
            writes=self.writes,
            prod=self.prod,
            broad_scope=self.broad_scope,
            long_duration=self.long_duration,
            very_long_duration=self.very_long_duration,
            long_after=self.long_duration_after,
            very_long_after=self.very_long_duration_after,
            prod_environments=frozenset(self.prod_environments),
            off_hours=self.off_hours,
            business_days=frozenset(days.index(day) for day in hours.days),
            business_start=hours.start,
            business_end=hours.end,
            recent_denial=self.recent_denial,
            recent_denials_max=self.recent_denials_max,
            recent_denials_window=self.recent_denials_window,
        )


class _OidcIn(_In):
    issuer: str = Field(pattern=r"^https://[^\s]+$", max_length=500)
    claims: dict[str, str] = Field(default_factory=dict)


class _RequestersIn(_In):
    groups: list[Word] = Field(default_factory=list)
    principals: list[Word] = Field(default_factory=list)
    oidc: _OidcIn | None = None

    @model_validator(mode="after")
    def _someone(self) -> Self:
        if not self.groups and not self.principals and self.oidc is None:
            raise _problem("requesters", "name at least one group, principal or oidc identity")
        return self


class _FromIn(_In):
    groups: list[Word] = Field(default_factory=list)
    principals: list[Word] = Field(default_factory=list)

    @model_validator(mode="after")
    def _someone(self) -> Self:
        if not self.groups and not self.principals:
            raise _problem("from", "name at least one group or principal who may approve")
        return self


class _StepIn(_In):
    name: Slug | None = None
    count: int = Field(ge=1, le=20)
    from_: _FromIn = Field(alias="from")
    when: ReviewerWhenIn | None = None


class _ApproversIn(_In):
    count: int = Field(ge=1, le=20)
    from_: _FromIn = Field(alias="from")
    when: ReviewerWhenIn | None = None
    deny_count: int = Field(default=1, ge=1, le=20)

    def step_fields(self) -> dict[str, Any]:
        return {"count": self.count, "from": self.from_, "when": self.when}


class _StepsIn(_In):
    steps: list[_StepIn] = Field(min_length=1, max_length=10)
    deny_count: int = Field(default=1, ge=1, le=20)

    @field_validator("steps")
    @classmethod
    def _unique_names(cls, value: list[_StepIn]) -> list[_StepIn]:
        names = [step.name for step in value if step.name is not None]
        if len(names) != len(set(names)):
            raise _problem("steps", "step names must be unique within a rule")
        return value


ApprovalIn = Annotated[
    Annotated[str, AfterValidator(_approval_keyword), Tag("keyword")]
    | Annotated[_ApproversIn, Tag("approvers")]
    | Annotated[_StepsIn, Tag("steps")],
    Discriminator(
        _approval_tag,
        custom_error_type="approval",
        custom_error_message=(
            "approval is auto, break_glass, {count: N, from: {groups: [...]}} or {steps: [...]}"
        ),
    ),
]


class _ExtensionsIn(_In):
    max: int = Field(ge=0, le=100)
    min_elapsed: PercentIn = 0.5
    max_total: DurationIn | None = None


class _NotifyIn(_In):
    slack_channel: str = Field(min_length=1, max_length=80)


class _RuleIn(_In):
    name: Slug
    description: str = ""
    requesters: _RequestersIn
    apis: list[Word] = Field(min_length=1)
    scopes: list[ScopeIn] = Field(min_length=1)
    max_duration: DurationIn | None = None
    approval: ApprovalIn
    when: WhenIn | None = None
    reason_pattern: PatternIn | None = None
    pending_ttl: DurationIn | None = None
    extensions: _ExtensionsIn | None = None
    notify: _NotifyIn | None = None
    max_calls: int | None = Field(default=None, ge=1, le=10_000_000)
    rate_limit: RateIn | None = None
    idle_timeout: DurationIn | None = None
    mask: list[MaskIn] = Field(default_factory=list, max_length=MAX_MASKS)

    @field_validator("apis")
    @classmethod
    def _star_alone(cls, value: list[str]) -> list[str]:
        if ANY_API in value and len(value) > 1:
            raise _problem("apis", f"{ANY_API!r} already means every API; list it alone")
        return value


class _PolicyIn(_In):
    version: int
    defaults: _DefaultsIn = Field(default_factory=_DefaultsIn)
    risk: _RiskIn | None = None
    rules: list[_RuleIn]

    @field_validator("version")
    @classmethod
    def _version_1(cls, value: int) -> int:
        if value != 1:
            raise _problem("version", f"unsupported policy version {value}: this jitgate reads 1")
        return value
