"""CEL conditions: the ``when:`` of a rule and the reviewer condition of an approval step.

Guarantees:

* A condition is compiled once, when the policy loads; a syntax error, a variable that
  does not exist, a function this engine does not provide, or a result that is not a
  boolean (found by a trial run on sample values) is a load error naming the problem.
* Evaluating never guesses: a result other than ``true``/``false`` or any error (a
  missing map key, a type mismatch) raises :class:`ConditionError`, which the engine
  turns into a denial (fail closed).

Expressions run in the ``common-expression-language`` package (a Rust CEL
implementation), chosen by measurement: on this project's 2-vCPU machines one
condition takes about 1 to 4 µs once its context is built (building the context of a
decision, ~55 µs, is done once per decision), where the pure-Python ``cel-python``
took about 500 µs for the same condition (``bench/policy.py``, ``docs/benchmarks.md``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import cel

#: Variables of a rule's ``when``; an approval step's ``when`` also sees ``reviewer``.
RULE_VARIABLES = frozenset({"request", "principal", "api", "risk", "time", "oidc"})
REVIEWER_VARIABLES = RULE_VARIABLES | {"reviewer"}

#: Functions and macros beyond the operators (``has``, ``all``, ``exists``, ``exists_one``,
#: ``map`` and ``filter`` are macros and need no entry).
FUNCTIONS = frozenset(
    {
        "size",
        "contains",
        "startsWith",
        "endsWith",
        "matches",
        "string",
        "int",
        "uint",
        "double",
        "bytes",
        "duration",
        "timestamp",
        "type",
        "dyn",
        "getFullYear",
        "getMonth",
        "getDate",
        "getDayOfMonth",
        "getDayOfYear",
        "getDayOfWeek",
        "getHours",
        "getMinutes",
        "getSeconds",
        "getMilliseconds",
    }
)
_OPERATOR_PREFIXES = ("_", "!", "-", "@")
# The library lists the name a comprehension macro binds (the ``x`` of ``l.all(x, …)``)
# among the expression's variables; it is not a variable of ours, so it is not unknown.
# (Should such a name be used outside its macro, the trial run or evaluation fails: closed.)
_MACRO_BINDING = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_]\w*)\s*,")
MAX_LENGTH = 2000


class ConditionError(Exception):
    """A condition could not be evaluated to a boolean; the caller must fail closed."""


@dataclass(frozen=True, slots=True)
class Condition:
    source: str
    program: cel.Program

    def holds(self, activation: cel.Context) -> bool:
        try:
            result = self.program.execute(activation)
        except Exception as exc:  # the library raises KeyError, TypeError, RuntimeError, …
            raise ConditionError(_first_sentence(str(exc)) or type(exc).__name__) from exc
        if not isinstance(result, bool):
            raise ConditionError(f"the condition gave {result!r}, not true or false")
        return result


def compile_condition(source: str, variables: frozenset[str] = RULE_VARIABLES) -> Condition:
    """Compile ``source``; a :class:`ValueError` says what is wrong with it."""
    if not source.strip():
        raise ValueError("the condition is empty")
    if len(source) > MAX_LENGTH:
        raise ValueError(f"the condition is longer than {MAX_LENGTH} characters")
    try:
        program = cel.compile(source)
    except ValueError as exc:
        raise ValueError(f"invalid CEL: {_syntax(str(exc))}") from exc
    references = program.references()
    bound = set(_MACRO_BINDING.findall(source))
    unknown = sorted(set(references.get("variables", ())) - variables - bound)
    if unknown:
        raise ValueError(
            f"unknown variable {unknown[0]!r}: use one of {', '.join(sorted(variables))}"
        )
    functions = [
        name for name in references.get("functions", ()) if not name.startswith(_OPERATOR_PREFIXES)
    ]
    missing = sorted(set(functions) - FUNCTIONS)
    if missing:
        raise ValueError(f"unknown function {missing[0]!r}")
    condition = Condition(source, program)
    try:
        # Only the variables this condition may use: a name bound by a macro cannot
        # smuggle ``reviewer`` into a rule's ``when``.
        sample = {**_SAMPLE, "reviewer": _SAMPLE["principal"]}
        condition.holds(activation(**{k: v for k, v in sample.items() if k in variables}))
    except ConditionError as exc:
        if not isinstance(exc.__cause__, KeyError):  # absent attributes are fine at load
            raise ValueError(str(exc)) from exc
    return condition


def activation(**variables: Any) -> cel.Context:
    """The evaluation context for ``variables`` (plain Python values); a value CEL cannot
    hold raises :class:`ConditionError`, so the caller fails closed."""
    try:
        return cel.Context(variables)
    except Exception as exc:  # the library raises ValueError or TypeError
        raise ConditionError(f"a variable cannot be given to CEL: {exc}") from exc


def _syntax(message: str) -> str:
    # "Failed to parse expression '…': ERROR: <input>:1:5: Syntax error: … | caret lines"
    detail = message.split("ERROR: ", 1)[-1]
    return _first_line(detail.replace("<input>:", "at "))


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _first_sentence(text: str) -> str:
    return _first_line(text).split(". ")[0]


_SAMPLE: Mapping[str, Any] = {
    "request": {
        "api": "sample",
        "scopes": ["GET /v1/sample"],
        "methods": ["GET"],
        "paths": ["/v1/sample"],
        "duration": timedelta(minutes=15),
        "reason": "sample",
        "ticket": "T-1",
        "starts_at": datetime(2026, 1, 5, 9, tzinfo=UTC),
        "extension": False,
    },
    "principal": {"id": "sample", "kind": "user", "groups": ["sample"], "attributes": {}},
    "api": {"name": "sample", "environment": "prod", "owners": ["sample"]},
    "risk": {"score": 0, "factors": {}},
    "time": {
        "now": datetime(2026, 1, 5, 9, tzinfo=UTC),
        "hour": 9,
        "minute": 0,
        "weekday": "mon",
        "date": "2026-01-05",
    },
    "oidc": {},
}
