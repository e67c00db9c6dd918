"""The device-attributes plist a device signs in phases 2 and 3: parsed, checked and cut down to what otad keeps.

A device sends what the Profile Service payload asked for (Apple documents UDID, VERSION,
PRODUCT, SERIAL, MEID, IMEI, ICCID, MAC_ADDRESS_EN0, DEVICE_NAME, COMPROMISED) plus CHALLENGE
and, on macOS, a few user fields. Everything else, and any value that is not a short scalar, is
dropped here, so nothing nested, circular or huge is ever stored or rendered into a profile.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from otad.errors import Kind, Refused
from otad.payloads import PlistError, load_plist
from otad.udid import is_udid

KNOWN = (
    "UDID",
    "VERSION",
    "PRODUCT",
    "SERIAL",
    "MEID",
    "IMEI",
    "ICCID",
    "MAC_ADDRESS_EN0",
    "DEVICE_NAME",
    "COMPROMISED",
    "CHALLENGE",
    # macOS sends these when the profile is installed for a user.
    "NotOnConsole",
    "UserID",
    "UserLongName",
    "UserShortName",
)
MAX_VALUE = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _scalar(value: object) -> str | bool | int | bytes | None:
    """The value if it is one otad keeps (a short printable string, a bool, a small int, short data), else None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else None
    if isinstance(value, str):
        return value if len(value) <= MAX_VALUE and not _CONTROL.search(value) else None
    if isinstance(value, bytes):
        return value if len(value) <= MAX_VALUE else None
    return None


def keep(document: Mapping[str, Any]) -> dict[str, Any]:
    """Only the known keys with short scalar values: what otad stores and renders (also applied to what an
    older otad stored)."""
    attributes: dict[str, Any] = {}
    for key in KNOWN:
        value = _scalar(document.get(key))
        if value is not None:
            attributes[key] = value
    return attributes


def parse(content: bytes) -> dict[str, Any]:
    """The signed device attributes, as ``keep`` cuts them down; refused without a valid UDID."""
    try:
        document = load_plist(content)
    except PlistError:
        raise Refused(Kind.MALFORMED, "the signed content is not a property list") from None
    if not isinstance(document, dict):
        raise Refused(Kind.MALFORMED, "the signed property list is not a dictionary")
    attributes = keep(document)
    if not is_udid(attributes.get("UDID")):
        raise Refused(Kind.MALFORMED, "the device attributes lack a valid UDID")
    return attributes
