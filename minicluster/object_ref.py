"""`ObjectRef`, Ray's public name for a reference to a task's result or a `put` object, and the
generators of refs that generator tasks return (ObjectRefGenerator, DynamicObjectRefGenerator).

Defined in `_private/client/object_ref.py` beside the per-process reference
counter that every ref feeds; this module is the public door to it.
"""

from minicluster._private.client.object_ref import ObjectRef
from minicluster._private.client.object_ref_generator import DynamicObjectRefGenerator, ObjectRefGenerator

__all__ = ["ObjectRef", "ObjectRefGenerator", "DynamicObjectRefGenerator"]
