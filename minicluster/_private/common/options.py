"""Validation of the options of remote functions and actors (`@remote(...)`, `.options(...)`).

Runs in whichever process declares or submits. Every problem is a ValueError
(or TypeError for a wrong type) that names the option, the bad value and what
is accepted, raised where the user wrote it, before anything is submitted.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any, Callable, Dict

from minicluster._private.common import labels, runtime_envs
from minicluster.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

# Options Ray accepts that would have no effect here. Empty on purpose: every option either
# works or is refused (an entry here needs its "no effect" row in docs/support.md, which
# tests/test_support_table.py checks).
_ACCEPTED_NO_EFFECT: frozenset = frozenset()


# Options where None is not "unset": placement_group=None keeps a task out of its parent's group.
_NONE_IS_A_CHOICE = {"placement_group"}

# Ray's words for a bad count, by the smallest value it takes (tests match them).
_ACCEPTS = {
    -1: "None, 0, -1 or a positive integer, where -1 represents infinity.",
    0: "None, 0 or a positive integer",
    1: "a positive integer",
}
# Ray refuses fractions of a resource finer than this.
_RESOURCE_PRECISION = 0.0001


def _wrong_type(name: str, value: Any, types: tuple) -> TypeError:
    return TypeError(f"The type of keyword '{name}' must be {types}, but received type {type(value)}")


def _int_at_least(minimum: int) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong_type(name, value, (int, type(None)))
        if value < minimum:
            raise ValueError(f"The keyword '{name}' only accepts {_ACCEPTS[minimum]} (got {value})")

    return check


def _non_negative_number(name: str, value: Any, resource: str = "") -> None:
    """num_cpus, num_gpus, memory, or (with `resource`: its name) a quantity in `resources`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _wrong_type(name, value, (int, float, type(None)))
    if value < 0:
        raise ValueError(f"The keyword '{name}' only accepts None or a non-negative number (got {value})")
    if name == "num_gpus" and value > 1 and value != int(value):
        # A GPU is shared only in fractions below one: 1.5 GPUs cannot be given out as devices.
        raise ValueError(f"GPU resource quantities >1 must be whole numbers. The specified quantity {value} is "
                         "invalid.")
    scaled = value / _RESOURCE_PRECISION
    if value < 1 and abs(scaled - round(scaled)) > 1e-6:
        raise ValueError(f"The precision of the fractional quantity of resource {resource or name} cannot go "
                         f"beyond {_RESOURCE_PRECISION} (got {value})")


def _resources(name: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise TypeError(f"The option 'resources' must be a dict of resource name to quantity, got {value!r}")
    for key, qty in value.items():
        if not isinstance(key, str):
            raise TypeError(f"Resource names must be strings, got {key!r}")
        if key in ("CPU", "GPU"):
            raise ValueError(f"Use the 'num_cpus' and 'num_gpus' options instead of {key!r} in 'resources'")
        _non_negative_number(f"resources[{key!r}]", qty, resource=key)


def _runtime_env(name: str, value: Any) -> None:
    # Local working_dir / py_modules paths are refused here, as in Ray: only init() uploads them.
    runtime_envs.check(value, at_job=False)


def _label_selector(name: str, value: Any) -> None:
    labels.parse_selector(value)


def _fallback_strategy(name: str, value: Any) -> None:
    labels.parse_fallback(value)


def _task_object_store_memory(name: str, value: Any) -> None:
    raise ValueError("Setting 'object_store_memory' is not implemented for tasks")


def _actor_object_store_memory(name: str, value: Any) -> None:
    _int_at_least(0)(name, value)
    # Ray's own word: the option reserves nothing in the store (spilling handles a full store).
    warnings.warn("Setting 'object_store_memory' for actors is deprecated since it doesn't actually reserve the "
                  "required object store memory. Use object spilling that's enabled by default instead to bypass "
                  "the object store memory size limitation.", DeprecationWarning, stacklevel=4)


def _labels_option(name: str, value: Any) -> None:
    raise ValueError("The option '_labels' (labels on a task or actor) is not supported by minicluster: nothing "
                     "here reads a task's labels; node labels are set with init(labels=) or "
                     "Cluster.add_node(labels=), and chosen with label_selector")


def _bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"The option {name!r} must be a bool, got {value!r}")


def _str(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"The option {name!r} must be a string, got {value!r}")


def _num_returns(name: str, value: Any) -> None:
    """Whether the callable is a generator is checked where it is known (check_num_returns)."""
    if value in ("dynamic", "streaming"):
        return
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _wrong_type(name, value, (int, str, type(None)))
    if isinstance(value, str) or value < 0:
        raise ValueError(f"The keyword '{name}' only accepts None, a non-negative integer, 'streaming' (for "
                         f"generators), or 'dynamic' (got {value!r})")


#: Ray's words (a RayDeprecationWarning there, a DeprecationWarning here).
DYNAMIC_NUM_RETURNS_WARNING = ("num_returns='dynamic' is deprecated and will be removed in a future "
                               "Ray release. Use num_returns='streaming' instead.")


def check_num_returns(num_returns: Any, is_generator: bool) -> None:
    """Ray's checks of num_returns against the callable: generator modes need a generator
    function; 'dynamic' warns that it is deprecated."""
    if num_returns == "dynamic":
        warnings.warn(DYNAMIC_NUM_RETURNS_WARNING, DeprecationWarning, stacklevel=4)
    if num_returns in ("streaming", "dynamic") and not is_generator:
        raise ValueError(f"num_returns='{num_returns}' can only be used with generator functions (functions "
                         "that use 'yield'). The decorated function is not a generator function.")


def _backpressure(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong_type(name, value, (int, type(None)))
    if value == 0 or value < -1:
        raise ValueError(f"{name}={value} is not allowed. Use a value > 0. If the value is equal to 1, the "
                         "behavior is identical to Python generator (generator 1 object whenever `next` is "
                         "called). Use -1 to disable this feature.")


def _retry_exceptions(name: str, value: Any) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, (list, tuple)) and value and all(
        isinstance(c, type) and issubclass(c, BaseException) for c in value
    ):
        return
    raise TypeError(
        f"The option 'retry_exceptions' must be a bool or a non-empty list of exception classes, got {value!r}"
    )


def _strategy(name: str, value: Any) -> None:
    if value is None or value in ("DEFAULT", "SPREAD") or isinstance(
        value, (NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy)
    ):
        return
    raise ValueError(
        f"The option 'scheduling_strategy' must be None, 'DEFAULT', 'SPREAD', a "
        f"NodeAffinitySchedulingStrategy or a PlacementGroupSchedulingStrategy, got {value!r}"
    )


def _placement_group(name: str, value: Any) -> None:
    # (a PlacementGroup handle: util/placement_group.py; this layer knows it by its id)
    if value is not None and value != "default" and not hasattr(value, "bundle_specs"):
        raise TypeError(f"The option 'placement_group' must be a PlacementGroup or 'default', got {value!r}")


def _lifetime(name: str, value: Any) -> None:
    if value not in (None, "detached", "non_detached"):
        raise ValueError(f"The option 'lifetime' must be None, 'detached' or 'non_detached', got {value!r}")


def _non_empty_str(what: str) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        _str(name, value)
        if value == "":
            raise ValueError(f"{what} cannot be an empty string.")

    return check


def _max_concurrency(name: str, value: Any) -> None:
    _int_at_least(1)(name, value)


def _concurrency_groups(name: str, value: Any) -> None:
    """Ray's `concurrency_groups={"io": 2, ...}`: each group's name and its max concurrency."""
    if isinstance(value, (list, tuple)) and not value:
        return  # Ray's "no groups" spelled as an empty list
    if not isinstance(value, dict):
        raise _wrong_type(name, value, (list, dict, type(None)))
    for group, limit in value.items():
        if not isinstance(group, str) or not group:
            raise TypeError(f"The names in 'concurrency_groups' must be non-empty strings, got {group!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"The max concurrency of concurrency group {group!r} must be a positive integer, "
                             f"got {limit!r}")


_COMMON: Dict[str, Callable[[str, Any], None]] = {
    "num_cpus": _non_negative_number,
    "num_gpus": _non_negative_number,
    "memory": _non_negative_number,
    "resources": _resources,
    "accelerator_type": _str,
    "label_selector": _label_selector,
    "fallback_strategy": _fallback_strategy,
    "_labels": _labels_option,
    "runtime_env": _runtime_env,
    "scheduling_strategy": _strategy,
    "name": _str,
    # False: the task (an actor's: its creation and its calls) is left out of the state API,
    # the journal and the timeline, as Ray leaves it out of its task events.
    "enable_task_events": _bool,
    "placement_group": _placement_group,
    "placement_group_bundle_index": _int_at_least(-1),
    "placement_group_capture_child_tasks": _bool,
}

TASK_OPTIONS: Dict[str, Callable[[str, Any], None]] = {
    **_COMMON,
    "num_returns": _num_returns,
    "_generator_backpressure_num_objects": _backpressure,
    "max_retries": _int_at_least(-1),
    "retry_exceptions": _retry_exceptions,
    "max_calls": _int_at_least(0),
    "object_store_memory": _task_object_store_memory,
}

ACTOR_OPTIONS: Dict[str, Callable[[str, Any], None]] = {
    **_COMMON,
    "max_restarts": _int_at_least(-1),
    "max_task_retries": _int_at_least(-1),
    "max_concurrency": _max_concurrency,
    "concurrency_groups": _concurrency_groups,
    "max_pending_calls": _int_at_least(-1),
    "allow_out_of_order_execution": _bool,
    "lifetime": _lifetime,
    "namespace": _non_empty_str("Actor namespace"),
    "get_if_exists": _bool,
    "name": _non_empty_str("Actor name"),
    "object_store_memory": _actor_object_store_memory,
}

METHOD_OPTIONS: Dict[str, Callable[[str, Any], None]] = {
    "num_returns": _num_returns,
    "_generator_backpressure_num_objects": _backpressure,
    "max_task_retries": _int_at_least(-1),
    "retry_exceptions": _retry_exceptions,
    "name": _str,
    "concurrency_group": _str,
    "enable_task_events": _bool,
}


# Options fixed when a function is declared; Ray refuses them in .options().
DECLARATION_ONLY = {"max_calls"}


def validate(options: Dict[str, Any], allowed: Dict[str, Callable[[str, Any], None]], what: str) -> Dict[str, Any]:
    """Check every option; returns the options that have an effect."""
    for name, value in options.items():
        check = allowed.get(name)
        if check is None:
            if name in _ACCEPTED_NO_EFFECT:
                continue
            valid = ", ".join(sorted(set(allowed) | _ACCEPTED_NO_EFFECT))
            raise ValueError(f"Invalid option keyword {name!r} for {what}. Valid ones are: {valid}.")
        if value is None and name not in ("scheduling_strategy",) and name not in _NONE_IS_A_CHOICE:
            continue
        check(name, value)
    return {k: v for k, v in options.items() if k in allowed and (v is not None or k in _NONE_IS_A_CHOICE)}
