"""systemd's notify protocol (Type=notify): READY=1, STATUS=, WATCHDOG=1, STOPPING=1.

A datagram to $NOTIFY_SOCKET (a path, or an abstract socket written ``@name``);
silently nothing when keysetd does not run under systemd.
"""

from __future__ import annotations

import os
import socket

__all__ = ["notify", "watchdog_period"]


def notify(*fields: str) -> bool:
    """Send ``KEY=value`` lines; True when a systemd socket took them."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    target = "\0" + address[1:] if address.startswith("@") else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(1.0)
            sock.connect(target)
            sock.sendall("\n".join(fields).encode())
    except OSError:
        return False
    return True


def watchdog_period() -> float | None:
    """How often to send WATCHDOG=1 (half of WatchdogSec), or None when there is no watchdog."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.01, int(usec) / 2_000_000)
    except ValueError:
        return None
