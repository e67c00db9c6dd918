"""The systemd notification protocol (sd_notify): tells a ``Type=notify`` unit when otad is ready.

With it, ``systemctl start otad`` returns once otad listens, and fails when the start fails.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


def notify(state: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send ``state`` (``READY=1``, ``STATUS=...``, ``RELOADING=1``, ``STOPPING=1``) to systemd, if it asked.

    Returns whether a message was sent; without ``$NOTIFY_SOCKET`` there is nobody to tell.
    """
    address = environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as channel:
        channel.connect(address)
        channel.sendall(state.encode("utf-8"))
    return True
