"""Fleet mode's store layer: etcd over its v3 JSON gateway, leases and fenced compare-and-swap.

The fleet planner and the daemon build on this; nothing here knows about keysets.
"""

from __future__ import annotations

from keysetd.fleet.etcd import (
    CasResult,
    Entry,
    EtcdSettings,
    EtcdStore,
    Guard,
    LeaseNotFound,
    prefix_end,
)
from keysetd.fleet.transport import HttpTransport, PostJson, TransportError

__all__ = [
    "CasResult",
    "Entry",
    "EtcdSettings",
    "EtcdStore",
    "Guard",
    "HttpTransport",
    "LeaseNotFound",
    "PostJson",
    "TransportError",
    "prefix_end",
]
