"""The state API's error, with Ray's name (`ray.util.state.exception.RayStateApiException`).

Raised in any process that calls `minicluster.util.state`: a bad filter, a
predicate other than `=` / `!=`, an unknown resource.
"""

from __future__ import annotations


class RayStateApiException(Exception):
    """A state API call was given something it cannot answer (the message says what)."""
