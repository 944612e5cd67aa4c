"""Policy file (YAML) -> validated :class:`~jitgate.policy.model.Policy`, or one clear error.

Guarantees:

* A bad file raises :class:`~jitgate.errors.ConfigError` whose detail has one line per
  problem, ordered by position, each ``<source>:<line>: <key path>: <what is wrong>``, e.g.
  ``policy.yaml:12: rules[1].scopes[0]: invalid scope 'GTE /x': unknown method 'GTE'``.
  Schema problems are all listed (up to 20); a YAML problem or a duplicate rule name stops
  at the first.
* Nothing is guessed or ignored: unknown keys, duplicate keys, duplicate rule names, YAML
  merge keys, custom tags and values of the wrong type (no ``"2"`` for ``2``) are errors.
* Features the schema reserves but this version cannot enforce (``when:`` CEL conditions,
  ``approval: break_glass``, ``requesters.oidc``) are refused, never skipped: a skipped
  condition would grant more than the author wrote.

The file is composed with PyYAML (keeping each node's line), turned into plain data with a
map from key path to line, validated by pydantic models, and each error's ``loc`` is mapped
back to the line of the deepest node that exists.
"""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Self

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
from jitgate.domain.scopes import Scope, parse_scope
from jitgate.errors import ConfigError, InvalidInput
from jitgate.policy.model import ANY_API, AUTO, Approval, Defaults, Policy, Requesters, Rule

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
    data, lines = _compose(text, source)
    if not isinstance(data, dict):
        raise _fail(source, lines[()], (), "a policy is a mapping with version, defaults, rules")
    try:
        document = _PolicyIn.model_validate(data)
    except ValidationError as exc:
        raise _report(exc, lines, source) from exc
    first_seen: dict[str, int] = {}
    for index, rule in enumerate(document.rules):
        where = ("rules", index, "name")
        if rule.name in first_seen:
            problem = f"duplicate rule name {rule.name!r} (first at line {first_seen[rule.name]})"
            raise _fail(source, lines[where], where, problem)
        first_seen[rule.name] = lines[where]
    defaults = Defaults(document.defaults.max_duration, document.defaults.pending_ttl)
    rules = tuple(
        _rule(rule, lines[("rules", index)], defaults) for index, rule in enumerate(document.rules)
    )
    return Policy(document.version, defaults, rules, source, digest)


def _rule(rule: _RuleIn, line: int, defaults: Defaults) -> Rule:
    approval = (
        AUTO
        if isinstance(rule.approval, str)
        else Approval(False, rule.approval.count, frozenset(rule.approval.from_.groups))
    )
    return Rule(
        name=rule.name,
        description=rule.description,
        requesters=Requesters(
            groups=frozenset(rule.requesters.groups),
            principals=frozenset(rule.requesters.principals),
        ),
        apis=frozenset(rule.apis),
        scopes=tuple(rule.scopes),
        max_duration=defaults.max_duration if rule.max_duration is None else rule.max_duration,
        approval=approval,
        line=line,
    )


# --- YAML: plain data plus the line of every key path ------------------------------------


def _compose(text: str, source: str) -> tuple[Any, dict[KeyPath, int]]:
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)
        root = loader.get_single_node()
        if root is None:
            raise _fail(source, 1, (), "the policy file is empty")
        walker = _Walker(loader, source)
        walker.lines[()] = root.start_mark.line + 1
        return walker.walk(root, ()), walker.lines
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = ", ".join(part for part in (exc.context, exc.problem) if part)
        raise _fail(source, line, (), f"invalid YAML: {problem or 'malformed'}") from exc
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise _fail(source, line, (), f"unacceptable character #x{exc.character:04x}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from exc
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
            raise _fail(self.source, line, path, f"more than {_MAX_NODES} YAML nodes")
        if isinstance(node, yaml.ScalarNode):
            return self.loader.construct_object(node)
        if node.tag not in _STANDARD_TAGS:
            raise _fail(self.source, line, path, f"unsupported YAML tag {node.tag!r}")
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
                raise _fail(self.source, key_line, path, "YAML merge keys (<<) are not supported")
            is_scalar = isinstance(key_node, yaml.ScalarNode)
            key = self.loader.construct_object(key_node) if is_scalar else None
            if not isinstance(key, str):
                problem = f"keys must be text, got {key_node.value!r}"
                raise _fail(self.source, key_line, path, problem)
            where = (*path, key)
            if key in mapping:
                problem = f"duplicate key (first at line {self.lines[where]})"
                raise _fail(self.source, key_line, where, problem)
            self.lines[where] = key_line
            mapping[key] = self.walk(value_node, where)
        return mapping


# --- errors ------------------------------------------------------------------------------


def _dotted(path: KeyPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _fail(source: str, line: int, path: KeyPath, problem: str) -> ConfigError:
    where = f"{_dotted(path)}: " if path else ""
    return ConfigError(f"{source}:{line}: {where}{problem}")


def _report(exc: ValidationError, lines: dict[KeyPath, int], source: str) -> ConfigError:
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
        located.append((line, _fail(source, line, tuple(loc), problem).detail))
    located.sort(key=lambda item: item[0])
    return ConfigError("\n".join(detail for _, detail in located[:_MAX_REPORTED]))


# --- schema ------------------------------------------------------------------------------


def _problem(kind: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(kind, message)  # no context: braces in message stay literal


def _not_yet(feature: str) -> PydanticCustomError:
    return _problem("unsupported", f"{feature} are not supported yet")


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
    if value == "break_glass":
        raise _not_yet("break-glass approvals (approval: break_glass)")
    if value != "auto":
        raise _problem("approval", f"unknown approval {value!r}: use auto or {{count: N, from: …}}")
    return value


def _approval_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return "keyword"
    return "approvers" if isinstance(value, dict) else None


_APPROVAL_TAGS = {"keyword", "approvers"}
Slug = Annotated[str, AfterValidator(_slug)]
Word = Annotated[str, AfterValidator(_word)]
DurationIn = Annotated[timedelta, PlainValidator(_duration)]
ScopeIn = Annotated[Scope, PlainValidator(_scope)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _DefaultsIn(_In):
    max_duration: DurationIn = timedelta(hours=1)
    pending_ttl: DurationIn = timedelta(hours=24)


class _RequestersIn(_In):
    groups: list[Word] = Field(default_factory=list)
    principals: list[Word] = Field(default_factory=list)
    oidc: Any = None

    @field_validator("oidc", mode="before")
    @classmethod
    def _no_oidc(cls, value: Any) -> Any:
        raise _not_yet("OIDC requesters (requesters.oidc)")

    @model_validator(mode="after")
    def _someone(self) -> Self:
        if not self.groups and not self.principals:
            raise _problem("requesters", "name at least one group or principal")
        return self


class _FromIn(_In):
    groups: list[Word] = Field(min_length=1)


class _ApprovalIn(_In):
    count: int = Field(ge=1)
    from_: _FromIn = Field(alias="from")


ApprovalIn = Annotated[
    Annotated[str, AfterValidator(_approval_keyword), Tag("keyword")]
    | Annotated[_ApprovalIn, Tag("approvers")],
    Discriminator(
        _approval_tag,
        custom_error_type="approval",
        custom_error_message="approval is auto or {count: N, from: {groups: [...]}}",
    ),
]


class _RuleIn(_In):
    name: Slug
    description: str = ""
    requesters: _RequestersIn
    apis: list[Word] = Field(min_length=1)
    scopes: list[ScopeIn] = Field(min_length=1)
    max_duration: DurationIn | None = None
    approval: ApprovalIn
    when: Any = None

    @field_validator("when", mode="before")
    @classmethod
    def _no_when(cls, value: Any) -> Any:
        raise _not_yet("CEL conditions (when:)")

    @field_validator("apis")
    @classmethod
    def _star_alone(cls, value: list[str]) -> list[str]:
        if ANY_API in value and len(value) > 1:
            raise _problem("apis", f"{ANY_API!r} already means every API; list it alone")
        return value


class _PolicyIn(_In):
    version: int
    defaults: _DefaultsIn = Field(default_factory=_DefaultsIn)
    rules: list[_RuleIn]

    @field_validator("version")
    @classmethod
    def _version_1(cls, value: int) -> int:
        if value != 1:
            raise _problem("version", f"unsupported policy version {value}: this jitgate reads 1")
        return value
