"""What a device's UDID looks like, for every place that accepts one from outside."""

from __future__ import annotations

import re

# Real UDIDs: 40 hex digits (older iOS), 8-16 hex with a dash (newer iOS), UUIDs (Macs).
_UDID = re.compile(r"[A-Za-z0-9-]{8,64}")


def is_udid(text: object) -> bool:
    """Whether ``text`` has the shape of a UDID; anything else is refused rather than stored or signed."""
    return isinstance(text, str) and _UDID.fullmatch(text) is not None
