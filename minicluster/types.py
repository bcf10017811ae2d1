"""`minicluster.types`, Ray's `ray.types`: the ObjectRef type for annotations (`ObjectRef[int]`)."""

from minicluster._private.client.object_ref import ObjectRef

__all__ = ["ObjectRef"]
