"""Ray's `ray.util.list_named_actors`: the names of the live named actors.

Runs in any process of a session (driver or worker): it asks the head, which keeps the
(namespace, name) of every named actor until that actor is dead for good (an actor that
is restarting keeps its name, as in Ray).
"""

from __future__ import annotations

from typing import Dict, List, Union

from minicluster._private.client import context


def list_named_actors(all_namespaces: bool = False) -> Union[List[str], List[Dict[str, str]]]:
    """The names of the named actors in this job's namespace; with `all_namespaces=True`,
    every named actor as a dict {"name": ..., "namespace": ...}."""
    client = context.client()
    named = client.state("named_actors")
    if all_namespaces:
        return [{"name": name, "namespace": namespace} for namespace, name in named]
    mine = client.namespace
    if mine is None:  # a worker: the job's namespace is the head's to say
        mine = client.state("namespace")
    return [name for namespace, name in named if namespace == mine]
