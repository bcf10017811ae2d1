"""Node labels and Ray's `label_selector` option: checking a selector and matching it against a node.

Checked in the submitting process (options.py); matched by the head's scheduler
(scheduler.py, driver process) against each node's labels ("ray.io/node-id" and
those given to init(labels=) or Cluster.add_node(labels=)).

A selector maps a label key to a condition, all of which must hold:
    "v"          the node's label equals v
    "!v"         the node lacks the label or it differs from v
    "in(a, b)"   the label is one of a, b
    "!in(a, b)"  the node lacks the label or it is none of a, b

Ray's `fallback_strategy` ([{"label_selector": {...}}, ...]) lists selectors to use, in order,
when no live node could ever match the task's own: a task carries its selectors as a tuple of
alternatives (`alternatives`), the first being its label_selector (None: any node).
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Tuple

_NAME = r"[a-zA-Z0-9]([a-zA-Z0-9_.-]{0,61}[a-zA-Z0-9])?"
_PREFIX = re.compile(rf"^({_NAME})?(\.({_NAME})?)*$")
_CONDITION = re.compile(rf"^!?(in)?\({_NAME}(, ?{_NAME})*\)$|^!?{_NAME}$")
_RULES = ("63 chars or less beginning and ending with an alphanumeric character ([a-z0-9A-Z]) with dashes "
          "(-), underscores (_), dots (.), and alphanumerics between.")

#: A checked selector: ((key, negated, frozenset of values), ...), sorted: hashable, one per meaning.
Selector = Tuple[Tuple[str, bool, frozenset], ...]


def _check_key(key: str) -> None:
    name = key
    if "/" in key:
        prefix, name = key.rsplit("/", 1)
        if len(prefix) > 253 or not _PREFIX.fullmatch(prefix):
            raise ValueError(f"Invalid label key prefix `{prefix}`. Prefix must be a series of DNS labels "
                             "separated by dots (.), not longer than 253 characters in total.")
    if len(name) > 63 or not re.fullmatch(_NAME, name):
        raise ValueError(f"Invalid label key name `{name}`. Name must be {_RULES}")


def parse_selector(selector: Any) -> Optional[Selector]:
    """The selector checked as Ray checks it (TypeError / ValueError), in matching form; None if empty."""
    if not isinstance(selector, dict):
        raise TypeError(f"The option 'label_selector' must be a dict of label key to condition, got {selector!r}")
    parsed = []
    for key, condition in selector.items():
        if not isinstance(key, str) or not isinstance(condition, str):
            raise TypeError(f"label_selector: keys and conditions must be strings, got {key!r}: {condition!r}")
        _check_key(key)
        if not _CONDITION.fullmatch(condition):
            raise ValueError(f"Invalid label selector value `{condition}`. The label selector value should "
                             "contain optional operators and a label value. Supported operators are: ! and "
                             f"{{'in'}}. Value must be {_RULES}")
        negated = condition.startswith("!")
        body = condition[1:] if negated else condition
        if body.endswith(")"):
            values = frozenset(v.strip() for v in body[body.index("(") + 1:-1].split(","))
        else:
            values = frozenset((body,))
        parsed.append((key, negated, values))
    return tuple(sorted(parsed, key=lambda rule: rule[0])) or None


def parse_fallback(fallback: Any) -> List[Optional[Selector]]:
    """Ray's fallback_strategy checked as Ray checks it: its selectors, in order."""
    if not isinstance(fallback, list):
        raise TypeError(f"The type of keyword 'fallback_strategy' must be (<class 'list'>, <class 'NoneType'>), "
                        f"but received type {type(fallback)}")
    found = []
    for option in fallback:
        if not isinstance(option, dict):
            raise ValueError("Each element in fallback_strategy must be a dictionary.")
        if not option:
            raise ValueError("Empty dictionary found in `fallback_strategy`.")
        for key in option:
            if key != "label_selector":
                raise ValueError(f"Unsupported option found: '{key}'. Only ['label_selector'] is currently "
                                 "supported.")
        found.append(parse_selector(option["label_selector"]))
    return found


def alternatives(label_selector: Any, fallback: Any) -> Optional[Tuple[Optional[Selector], ...]]:
    """A task's selectors in the order they are tried (None when it has none)."""
    primary = parse_selector(label_selector) if label_selector is not None else None
    others = parse_fallback(fallback) if fallback is not None else []
    if primary is None and not others:
        return None
    return (primary, *others)


def matches(labels: Dict[str, str], selector: Optional[Selector]) -> bool:
    """Whether a node with these labels satisfies every condition of the selector."""
    if not selector:
        return True
    for key, negated, values in selector:
        value = labels.get(key)
        found = value is not None and value in values
        if found == negated:
            return False
    return True


def describe(selector: Optional[Selector]) -> str:
    """The selector as the user wrote it, for messages."""
    parts = []
    for key, negated, values in selector or ():
        body = next(iter(values)) if len(values) == 1 else f"in({', '.join(sorted(values))})"
        parts.append(f"{key}: {'!' if negated else ''}{body}")
    return "{" + ", ".join(parts) + "}"
