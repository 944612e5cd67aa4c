"""Response masks: RFC 9535 JSONPath queries whose selected values are replaced by :data:`MASK`.

Guarantees:

* A mask is parsed strictly (RFC 9535: leading ``$``, no surrounding whitespace, no
  extensions) by ``python-jsonpath`` and must select object members or array items:
  name (``.a``, ``['a b']``), index (``[0]``, ``[-1]``), slice (``[0:2]``) and wildcard
  (``*``) selectors, as child (``.``) or descendant (``..``) segments. Filters
  (``[?…]``) are refused: they run an expression (and possibly a regular expression) per
  node of every masked response, and make a mask's reach depend on the data. ``$``
  alone is refused: a mask replaces a value inside the document, never the document.
* At most :data:`MAX_MASKS` masks per API or rule, each at most :data:`MAX_MASK_LENGTH`
  characters; repeated masks are one. A bad mask is an :class:`~jitgate.errors.InvalidInput`
  whose detail quotes it and says what is wrong.
* :func:`apply_masks` replaces every selected value, whatever its type (string, number,
  object, …), by the same string :data:`MASK`, and returns how many distinct values it
  replaced. All masks are evaluated on the document as it came, then applied, so the
  count does not depend on their order. A path that selects nothing is not an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from jsonpath import JSONPath, JSONPathEnvironment, JSONPathError
from jsonpath.segments import JSONPathChildSegment, JSONPathRecursiveDescentSegment
from jsonpath.selectors import IndexSelector, NameSelector, SliceSelector, WildcardSelector

from jitgate.errors import InvalidInput

MASK = "****"
MAX_MASKS = 50
MAX_MASK_LENGTH = 256

_ENV = JSONPathEnvironment(strict=True)
_SEGMENTS = (JSONPathChildSegment, JSONPathRecursiveDescentSegment)
_SELECTORS = (NameSelector, IndexSelector, SliceSelector, WildcardSelector)


@dataclass(frozen=True, slots=True)
class Mask:
    """One parsed mask; ``text`` is how it was declared."""

    text: str
    query: JSONPath = field(repr=False, compare=False)


def parse_mask(text: object) -> Mask:
    if not isinstance(text, str) or not text:
        raise InvalidInput(f"mask {text!r}: a mask is a JSONPath such as $.card.number")
    if len(text) > MAX_MASK_LENGTH:
        raise InvalidInput(f"mask {text[:40]!r}…: longer than {MAX_MASK_LENGTH} characters")
    try:
        query = _ENV.compile(text)
    except (JSONPathError, RecursionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "invalid JSONPath"
        raise InvalidInput(f"mask {text!r}: {reason}") from None
    if not isinstance(query, JSONPath) or not query.segments:
        raise InvalidInput(f"mask {text!r}: it must select object members or array items")
    for segment in query.segments:
        if not isinstance(segment, _SEGMENTS) or not all(
            isinstance(selector, _SELECTORS) for selector in segment.selectors
        ):
            raise InvalidInput(
                f"mask {text!r}: only name, index, slice and wildcard selectors are allowed"
                " (no filters)"
            )
    return Mask(text, query)


def parse_masks(texts: Iterable[object]) -> tuple[Mask, ...]:
    """Each mask parsed, repeats dropped, in declaration order."""
    masks: dict[str, Mask] = {}
    for text in texts:
        mask = parse_mask(text)
        masks.setdefault(mask.text, mask)
    if len(masks) > MAX_MASKS:
        raise InvalidInput(f"at most {MAX_MASKS} masks are allowed, got {len(masks)}")
    return tuple(masks.values())


def apply_masks(document: Any, masks: Sequence[Mask]) -> int:
    """Replace, in place, each value of ``document`` that a mask selects; how many.

    ``document`` is what :func:`json.loads` returns. Raises
    :class:`~jsonpath.JSONPathError` when a descendant segment meets a document nested
    deeper than the library's recursion limit (100 levels).
    """
    if not isinstance(document, dict | list):  # a scalar document has no member to mask
        return 0
    targets: dict[tuple[Any, ...], tuple[Any, Any]] = {}
    for mask in masks:
        for match in mask.query.finditer(document):
            if match.parent is not None:
                targets.setdefault(match.parts, (match.parent.obj, match.parts[-1]))
    for container, key in targets.values():
        container[key] = MASK
    return len(targets)
