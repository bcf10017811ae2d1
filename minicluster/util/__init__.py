"""Ray's `ray.util`: helpers beside the core API (its submodules: scheduling_strategies, state)."""

from __future__ import annotations


def get_node_ip_address(address: str = "8.8.8.8:53") -> str:
    """The IP address of the node this code runs on: every virtual node is this machine, 127.0.0.1
    (Ray's `address` names a host to route toward; nothing is contacted here)."""
    return "127.0.0.1"


__all__ = ["get_node_ip_address"]
