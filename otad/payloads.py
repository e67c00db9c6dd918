"""Configuration-profile payload builders and a validator for Apple's profile format.

Every profile otad sends goes through `serialize`, which refuses any error finding.
"""

from __future__ import annotations

import functools
import plistlib
import re
import uuid
import xml.parsers.expat
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

Payload = dict[str, Any]

# Plist value kinds, named by the XML element an author would write.
_KIND_NAMES = {
    "string": "<string>",
    "data": "<data>",
    "integer": "<integer>",
    "number": "<real> or <integer>",
    "bool": "<true/> or <false/>",
    "date": "<date>",
    "array": "<array>",
    "dict": "<dict>",
}

GENERAL_KEYS: dict[str, str] = {
    "PayloadType": "string",
    "PayloadVersion": "integer",
    "PayloadIdentifier": "string",
    "PayloadUUID": "string",
    "PayloadDisplayName": "string",
    "PayloadDescription": "string",
    "PayloadOrganization": "string",
}
REQUIRED_KEYS = ("PayloadType", "PayloadVersion", "PayloadIdentifier", "PayloadUUID")

# Keys that belong to a whole profile (the top level), not to the payloads inside it.
PROFILE_KEYS: dict[str, str] = {
    "PayloadContent": "",
    "EncryptedPayloadContent": "data",
    "PayloadRemovalDisallowed": "bool",
    "PayloadExpirationDate": "date",
    "RemovalDate": "date",
    "DurationUntilRemoval": "number",
    "PayloadScope": "string",
    "ConsentText": "dict",
    "HasRemovalPasscode": "bool",
    "IsEncrypted": "bool",
    "TargetDeviceType": "integer",
}

_CERTIFICATE_KEYS: dict[str, str] = {
    "PayloadContent": "data",
    "PayloadCertificateFileName": "string",
}

# Per payload type, the keys beside the general ones; "" means checked by a dedicated rule.
TYPE_KEYS: dict[str, dict[str, str]] = {
    "Configuration": {},
    "Profile Service": {},
    "com.apple.security.pkcs12": {
        **_CERTIFICATE_KEYS,
        "Password": "string",
        "AllowAllAppsAccess": "bool",
        "KeyIsExtractable": "bool",
    },
    "com.apple.security.pkcs1": dict(_CERTIFICATE_KEYS),
    "com.apple.security.root": dict(_CERTIFICATE_KEYS),
    "com.apple.security.pem": dict(_CERTIFICATE_KEYS),
    "com.apple.security.scep": {"PayloadContent": ""},
    "com.apple.webClip.managed": {
        "URL": "string",
        "Label": "string",
        "Icon": "data",
        "IsRemovable": "bool",
        "FullScreen": "bool",
        "Precomposed": "bool",
        "IgnoreManifestScope": "bool",
        "TargetApplicationBundleIdentifier": "string",
    },
}
_TOP_LEVEL_TYPES = ("Configuration", "Profile Service")
_REQUIRED_TYPE_KEYS: dict[str, tuple[str, ...]] = {
    "com.apple.security.pkcs12": ("PayloadContent",),
    "com.apple.security.pkcs1": ("PayloadContent",),
    "com.apple.security.root": ("PayloadContent",),
    "com.apple.security.pem": ("PayloadContent",),
    "com.apple.security.scep": ("PayloadContent",),
    "com.apple.webClip.managed": ("URL", "Label"),
}

SCEP_CONTENT_KEYS: dict[str, str] = {
    "URL": "string",
    "Name": "string",
    "Subject": "",
    "Challenge": "string",
    "Keysize": "",
    "Key Type": "",
    "Key Usage": "",
    "CAFingerprint": "data",
    "Retries": "integer",
    "RetryDelay": "integer",
    "SubjectAltName": "dict",
    "KeyIsExtractable": "bool",
    "AllowAllAppsAccess": "bool",
}
SCEP_KEY_SIZES = (1024, 2048, 4096)
SCEP_KEY_USAGES = (0, 1, 4, 5)

PROFILE_SERVICE_CONTENT_KEYS: dict[str, str] = {
    "URL": "",
    "DeviceAttributes": "",
    "Challenge": "",
}

# Recognised by iOS in a SCEP Subject; anything else must be written as a dotted OID.
SUBJECT_ATTRIBUTES = ("C", "ST", "L", "O", "OU", "CN")

_UUID_FORM = re.compile(r"^[0-9A-Fa-f]{8}(-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}$")
_OID_FORM = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
# plistlib's XML writer refuses these characters in <string>.
_XML_UNSAFE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_INT_RANGE = (-(2**63), 2**64 - 1)
_PLIST_TYPES = (str, bytes, bytearray, int, float, datetime, list, tuple, dict)


def new_uuid() -> str:
    """Return a fresh random UUID in the uppercase canonical form Apple's tools write."""
    return str(uuid.uuid4()).upper()


@dataclass(frozen=True)
class Finding:
    """One problem in a profile, at a key path such as ``PayloadContent[0].PayloadUUID``."""

    level: Literal["error", "warning"]
    path: str
    message: str

    def __str__(self) -> str:
        if self.path:
            return f"{self.level}: {self.path}: {self.message}"
        return f"{self.level}: {self.message}"


class ProfileInvalid(ValueError):
    """A profile or payload has at least one error finding."""

    def __init__(self, findings: Sequence[Finding]) -> None:
        self.findings = list(findings)
        errors = [f for f in self.findings if f.level == "error"]
        super().__init__(str(errors[0]) if errors else "invalid profile")


def _kind_of(value: object) -> str:
    if value is True:
        return "<true/>"
    if value is False:
        return "<false/>"
    if isinstance(value, str):
        return "<string>"
    if isinstance(value, (bytes, bytearray)):
        return "<data>"
    if isinstance(value, int):
        return "<integer>"
    if isinstance(value, float):
        return "<real>"
    if isinstance(value, datetime):
        return "<date>"
    if isinstance(value, (list, tuple)):
        return "<array>"
    if isinstance(value, dict):
        return "<dict>"
    return f"{type(value).__name__} (not a property-list value)"


def _is_kind(value: object, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "data":
        return isinstance(value, (bytes, bytearray))
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "date":
        return isinstance(value, datetime)
    if kind == "array":
        return isinstance(value, (list, tuple))
    if kind == "dict":
        return isinstance(value, dict)
    raise AssertionError(f"unknown kind {kind!r}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_SEPARATORS = re.compile(r"[\s_\-]")


@functools.lru_cache(maxsize=4096)
def _normalise_key(key: str) -> str:
    # Cached: every profile otad sends is validated, and its keys are nearly always the same few hundred.
    return _SEPARATORS.sub("", key).lower()


@functools.lru_cache(maxsize=256)
def _spellings(known: tuple[str, ...]) -> dict[str, str]:
    """Each known key by its normalised spelling (the known-key tables are constants)."""
    return {_normalise_key(key): key for key in known}


class _Validator:
    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self._uuids: dict[str, str] = {}

    def error(self, path: str, message: str) -> None:
        self.findings.append(Finding("error", path, message))

    def warning(self, path: str, message: str) -> None:
        self.findings.append(Finding("warning", path, message))

    def expect(self, value: object, kind: str, path: str) -> bool:
        if _is_kind(value, kind):
            return True
        # plist_values has already reported values that are no plist type at all.
        if isinstance(value, _PLIST_TYPES):
            self.error(path, f"must be {_KIND_NAMES[kind]}, not {_kind_of(value)}")
        return False

    def plist_values(self, root: object, path: str) -> None:
        """Flag anything plistlib would refuse or write wrongly, anywhere in the tree."""
        # Iterative, so that a deeply nested input cannot exhaust the stack.
        stack: list[tuple[object, str]] = [(root, path)]
        while stack:
            value, here = stack.pop()
            if isinstance(value, dict):
                items = list(value.items())
                for key, item in reversed(items):
                    if not isinstance(key, str):
                        self.error(here, f"dictionary key {key!r} must be <string>")
                        continue
                    stack.append((item, _join(here, key)))
            elif isinstance(value, (list, tuple)):
                for index in reversed(range(len(value))):
                    stack.append((value[index], f"{here}[{index}]"))
            elif isinstance(value, str):
                if _XML_UNSAFE.search(value):
                    self.error(here, "control characters cannot appear in <string>; use <data>")
            elif isinstance(value, bool):
                pass
            elif isinstance(value, int):
                if not _INT_RANGE[0] <= value <= _INT_RANGE[1]:
                    self.error(here, "integer out of the 64-bit range of a property list")
            elif isinstance(value, datetime):
                offset = value.utcoffset()
                if offset is not None and offset != timedelta(0):
                    self.error(here, "<date> must be UTC (plist dates carry no time zone)")
            elif not isinstance(value, (bytes, bytearray, float)):
                self.error(here, f"{type(value).__name__} is not a property-list value")

    def profile(self, profile: object) -> None:
        self.plist_values(profile, "")
        if not isinstance(profile, dict):
            self.error("", f"top level must be <dict>, not {_kind_of(profile)}")
            return
        kind = profile.get("PayloadType")
        if isinstance(kind, str) and kind not in _TOP_LEVEL_TYPES:
            self.error(
                "PayloadType",
                f"top-level PayloadType must be Configuration or Profile Service, not {kind!r}",
            )
        self.payload(profile, "", top=True)

    def payloads(self, payloads: object, prefix: str) -> None:
        self.plist_values(payloads, prefix)
        if not isinstance(payloads, (list, tuple)):
            self.error(prefix, f"payloads must be <array>, not {_kind_of(payloads)}")
            return
        for index, payload in enumerate(payloads):
            path = f"{prefix}[{index}]"
            if isinstance(payload, dict):
                self.payload(payload, path, top=False)
            else:
                self.error(path, f"payload must be <dict>, not {_kind_of(payload)}")

    def payload(self, payload: dict[Any, Any], path: str, *, top: bool) -> None:
        for key in REQUIRED_KEYS:
            if key not in payload:
                self.error(_join(path, key), "missing required key")
        for key, kind in GENERAL_KEYS.items():
            if key in payload:
                self.expect(payload[key], kind, _join(path, key))
        self.general_values(payload, path)

        payload_type = payload.get("PayloadType")
        if not isinstance(payload_type, str):
            return
        if not top and payload_type in _TOP_LEVEL_TYPES:
            self.error(_join(path, "PayloadType"), f"a {payload_type} payload cannot be nested")
            return
        type_keys = TYPE_KEYS.get(payload_type)
        if type_keys is None:
            # Payload types otad has no table for keep their own keys unchecked.
            self.misspellings(payload, path, GENERAL_KEYS)
            return
        known = {**GENERAL_KEYS, **type_keys, **(PROFILE_KEYS if top else {})}
        self.keys(payload, path, known, f"{payload_type} payloads")
        for key in _REQUIRED_TYPE_KEYS.get(payload_type, ()):
            if key not in payload:
                self.error(_join(path, key), "missing required key")
        for key, kind in known.items():
            if kind and key in payload and key not in GENERAL_KEYS:
                self.expect(payload[key], kind, _join(path, key))

        if payload_type == "Configuration":
            self.configuration(payload, path)
        elif payload_type == "Profile Service":
            self.profile_service(payload.get("PayloadContent"), _join(path, "PayloadContent"))
        elif payload_type == "com.apple.security.scep" and "PayloadContent" in payload:
            self.scep(payload["PayloadContent"], _join(path, "PayloadContent"))

    def general_values(self, payload: dict[Any, Any], path: str) -> None:
        version = payload.get("PayloadVersion")
        if _is_kind(version, "integer") and version != 1:
            self.warning(_join(path, "PayloadVersion"), "should be 1")
        identifier = payload.get("PayloadIdentifier")
        if isinstance(identifier, str) and not identifier.strip():
            self.error(_join(path, "PayloadIdentifier"), "must not be empty")
        payload_uuid = payload.get("PayloadUUID")
        if isinstance(payload_uuid, str):
            here = _join(path, "PayloadUUID")
            if not _UUID_FORM.match(payload_uuid):
                self.warning(here, "not in UUID form (XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX)")
            seen = self._uuids.setdefault(payload_uuid.upper(), here)
            if seen != here:
                self.error(here, f"duplicate PayloadUUID (also at {seen})")

    def keys(self, mapping: dict[Any, Any], path: str, known: dict[str, str], what: str) -> None:
        self.misspellings(mapping, path, known)
        spellings = _spellings(tuple(known))
        for key in mapping:
            if isinstance(key, str) and key not in known and _normalise_key(key) not in spellings:
                self.warning(_join(path, key), f"unknown key for {what}")

    def misspellings(self, mapping: dict[Any, Any], path: str, known: dict[str, str]) -> None:
        by_spelling = _spellings(tuple(known))
        for key in mapping:
            if not isinstance(key, str) or key in known:
                continue
            right = by_spelling.get(_normalise_key(key))
            if right is not None:
                self.error(_join(path, key), f"misspelled key: the key is {right!r}")

    def configuration(self, payload: dict[Any, Any], path: str) -> None:
        has_content = "PayloadContent" in payload
        has_encrypted = "EncryptedPayloadContent" in payload
        if has_content and has_encrypted:
            self.error(
                _join(path, "EncryptedPayloadContent"),
                "not allowed together with PayloadContent",
            )
        elif not has_content and not has_encrypted:
            self.error(
                _join(path, "PayloadContent"),
                "missing: a Configuration needs PayloadContent or EncryptedPayloadContent",
            )
        if has_content:
            content = payload["PayloadContent"]
            here = _join(path, "PayloadContent")
            if self.expect(content, "array", here):
                for index, item in enumerate(content):
                    if isinstance(item, dict):
                        self.payload(item, f"{here}[{index}]", top=False)
                    else:
                        self.error(f"{here}[{index}]", f"must be <dict>, not {_kind_of(item)}")

    def profile_service(self, content: object, path: str) -> None:
        if content is None:
            self.error(path, "missing required key")
            return
        if not self.expect(content, "dict", path):
            return
        assert isinstance(content, dict)
        self.keys(content, path, PROFILE_SERVICE_CONTENT_KEYS, "a Profile Service")
        url = content.get("URL")
        if url is None:
            self.error(_join(path, "URL"), "missing required key")
        elif self.expect(url, "string", _join(path, "URL")):
            assert isinstance(url, str)
            scheme = url.split(":", 1)[0].lower()
            if scheme not in ("https", "http") or not url[len(scheme) :].startswith("://"):
                self.error(_join(path, "URL"), "must be an https:// URL")
            elif scheme == "http":
                self.warning(_join(path, "URL"), "plain http exposes the device attributes")
        attributes = content.get("DeviceAttributes")
        here = _join(path, "DeviceAttributes")
        if attributes is None:
            self.error(here, "missing required key")
        elif self.expect(attributes, "array", here):
            assert isinstance(attributes, (list, tuple))
            for index, item in enumerate(attributes):
                self.expect(item, "string", f"{here}[{index}]")
        if "Challenge" in content:
            challenge = content["Challenge"]
            if not isinstance(challenge, (str, bytes, bytearray)):
                self.error(
                    _join(path, "Challenge"),
                    f"must be <string> or <data>, not {_kind_of(challenge)}",
                )

    def scep(self, content: object, path: str) -> None:
        if not self.expect(content, "dict", path):
            return
        assert isinstance(content, dict)
        self.keys(content, path, SCEP_CONTENT_KEYS, "a SCEP payload")
        for key, kind in SCEP_CONTENT_KEYS.items():
            if kind and key in content:
                self.expect(content[key], kind, _join(path, key))
        if "URL" not in content:
            self.error(_join(path, "URL"), "missing required key")
        if "Keysize" in content:
            here = _join(path, "Keysize")
            size = content["Keysize"]
            if self.expect(size, "integer", here) and size not in SCEP_KEY_SIZES:
                self.error(
                    here,
                    f"must be one of {', '.join(map(str, SCEP_KEY_SIZES))}, not {size}",
                )
        if "Key Type" in content:
            here = _join(path, "Key Type")
            key_type = content["Key Type"]
            if self.expect(key_type, "string", here) and key_type != "RSA":
                self.error(here, f"must be 'RSA', not {key_type!r}")
        if "Key Usage" in content:
            here = _join(path, "Key Usage")
            usage = content["Key Usage"]
            if self.expect(usage, "integer", here) and usage not in SCEP_KEY_USAGES:
                self.error(
                    here,
                    f"must be one of {', '.join(map(str, SCEP_KEY_USAGES))}, not {usage}",
                )
        if "Subject" in content:
            self.subject(content["Subject"], _join(path, "Subject"))

    def subject(self, subject: object, path: str) -> None:
        if not self.expect(subject, "array", path):
            return
        assert isinstance(subject, (list, tuple))
        for i, rdn in enumerate(subject):
            here = f"{path}[{i}]"
            if not self.expect(rdn, "array", here):
                continue
            assert isinstance(rdn, (list, tuple))
            if not rdn:
                self.error(here, "empty name component; each needs an [attribute, value] pair")
            for j, pair in enumerate(rdn):
                if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(part, str) for part in pair)):
                    self.error(
                        f"{here}[{j}]",
                        "must be an <array> of two <string>s: attribute, value",
                    )


def validate(profile: object) -> list[Finding]:
    """Check a whole profile (a top-level Configuration or Profile Service) and list the findings."""
    validator = _Validator()
    validator.profile(profile)
    return validator.findings


def validate_payloads(payloads: object, prefix: str = "") -> list[Finding]:
    """Check an array of payloads as they sit inside a Configuration, paths starting at `prefix`."""
    validator = _Validator()
    validator.payloads(payloads, prefix)
    return validator.findings


def _raise_on_errors(findings: list[Finding]) -> None:
    if any(f.level == "error" for f in findings):
        raise ProfileInvalid(findings)


def serialize(profile: Payload) -> bytes:
    """Validate `profile` and return its XML plist; raise `ProfileInvalid` if it has errors."""
    _raise_on_errors(validate(profile))
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML, sort_keys=True)


def serialize_payloads(payloads: Sequence[Payload]) -> bytes:
    """Validate a payload array (what EncryptedPayloadContent encrypts) and return its XML plist."""
    _raise_on_errors(validate_payloads(payloads))
    return plistlib.dumps(list(payloads), fmt=plistlib.FMT_XML, sort_keys=True)


def _duplicate_keys(data: bytes) -> list[Finding]:
    """Find keys repeated in one XML <dict>: plistlib silently keeps only the last one."""
    # Each open container: [path, seen keys or None for an array, pending key, next index].
    stack: list[list[Any]] = []
    text: list[str] = []
    found: list[Finding] = []

    def child_path() -> str:
        if not stack:
            return ""
        parent = stack[-1]
        if parent[1] is None:
            parent[3] += 1
            return f"{parent[0]}[{parent[3] - 1}]"
        return _join(parent[0], parent[2] or "")

    def start(name: str, attributes: dict[str, str]) -> None:
        text.clear()
        if name in ("plist", "key"):
            return
        path = child_path()
        if name in ("dict", "array"):
            stack.append([path, set() if name == "dict" else None, None, 0])

    def end(name: str) -> None:
        if name == "key" and stack and stack[-1][1] is not None:
            key = "".join(text)
            parent = stack[-1]
            if key in parent[1]:
                found.append(
                    Finding(
                        "error",
                        _join(parent[0], key),
                        "duplicate key; only the last one counts",
                    )
                )
            parent[1].add(key)
            parent[2] = key
        elif name in ("dict", "array") and stack:
            stack.pop()

    parser = xml.parsers.expat.ParserCreate()
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text.append
    parser.Parse(data, True)
    return found


class PlistError(ValueError):
    """Bytes that are not a property list; str() is a one-line reason."""


def load_plist(data: bytes) -> Any:
    """Parse an XML or binary property list from outside bytes; any failure is a PlistError.

    plistlib reports bad input with whatever its parser trips over (ValueError, ExpatError,
    AttributeError for a malformed <date>, RecursionError for deep binary nesting...), so every
    exception is caught here, at the boundary. It refuses XML entity declarations outright.
    """
    try:
        return plistlib.loads(data)
    except Exception as error:  # noqa: BLE001 - the boundary: nothing of plistlib's may escape
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise PlistError(first[:200]) from None


def lint(data: bytes) -> list[Finding]:
    """Parse plist bytes (XML or binary) and validate them as a profile."""
    try:
        profile = load_plist(data)
    except PlistError as e:
        return [Finding("error", "", f"not a property list: {e}")]
    findings = validate(profile)
    if not data.lstrip().startswith(b"bplist"):
        # plistlib accepted the XML (and its refusal of entity declarations), so this
        # second pass over the same bytes is safe.
        findings.extend(_duplicate_keys(data))
    return findings


def _general(
    payload_type: str,
    *,
    identifier: str,
    display_name: str,
    organization: str,
    description: str,
) -> Payload:
    return {
        "PayloadType": payload_type,
        "PayloadVersion": 1,
        "PayloadIdentifier": identifier,
        "PayloadUUID": new_uuid(),
        "PayloadDisplayName": display_name,
        "PayloadOrganization": organization,
        "PayloadDescription": description,
    }


def _checked_payload(payload: Payload) -> Payload:
    validator = _Validator()
    validator.plist_values(payload, "")
    validator.payload(payload, "", top=False)
    _raise_on_errors(validator.findings)
    return payload


def profile_service_payload(
    *,
    url: str,
    device_attributes: Sequence[str],
    challenge: str,
    identifier: str,
    organization: str,
    display_name: str,
    description: str,
) -> Payload:
    """Build the phase-1 Profile Service profile asking the device to POST its attributes to `url`."""
    profile = _general(
        "Profile Service",
        identifier=identifier,
        display_name=display_name,
        organization=organization,
        description=description,
    )
    profile["PayloadContent"] = {
        "URL": url,
        "DeviceAttributes": list(device_attributes),
        "Challenge": challenge,
    }
    _raise_on_errors(validate(profile))
    return profile


def scep_payload(
    *,
    url: str,
    subject: Sequence[Sequence[Sequence[str]]],
    challenge: str,
    keysize: int,
    identifier: str,
    display_name: str,
    organization: str,
    description: str = "Enrolls a device identity certificate over SCEP",
    key_usage: int = 5,
    name: str | None = None,
    ca_fingerprint: bytes | None = None,
) -> Payload:
    """Build a com.apple.security.scep payload; `subject` is Apple's array of [attribute, value] arrays.

    ``ca_fingerprint`` (the SHA-1 of the CA certificate's DER, as Apple's reference server computes
    it) lets the device check the CA it finds in GetCACert, so SCEP may run over plain HTTP.
    """
    payload = _general(
        "com.apple.security.scep",
        identifier=identifier,
        display_name=display_name,
        organization=organization,
        description=description,
    )
    content: Payload = {
        "URL": url,
        "Subject": [[list(pair) for pair in rdn] for rdn in subject],
        "Challenge": challenge,
        "Keysize": keysize,
        "Key Type": "RSA",
        "Key Usage": key_usage,
    }
    if name is not None:
        content["Name"] = name
    if ca_fingerprint is not None:
        content["CAFingerprint"] = ca_fingerprint
    payload["PayloadContent"] = content
    return _checked_payload(payload)


def pkcs12_payload(
    *,
    p12: bytes,
    password: str,
    identifier: str,
    display_name: str,
    organization: str,
    description: str = "Installs a device identity",
) -> Payload:
    """Build a com.apple.security.pkcs12 payload; the PKCS#12 bytes become <data>."""
    payload = _general(
        "com.apple.security.pkcs12",
        identifier=identifier,
        display_name=display_name,
        organization=organization,
        description=description,
    )
    payload["PayloadContent"] = bytes(p12)
    payload["Password"] = password
    payload["PayloadCertificateFileName"] = "identity.p12"
    return _checked_payload(payload)


def configuration_profile(
    *,
    identifier: str,
    organization: str,
    display_name: str,
    description: str,
    content: Sequence[Payload] | None = None,
    encrypted_content: bytes | None = None,
    expiration_date: datetime | None = None,
    removal_disallowed: bool | None = None,
) -> Payload:
    """Build a top-level Configuration holding either `content` or `encrypted_content` (CMS DER)."""
    if (content is None) == (encrypted_content is None):
        raise ValueError("give exactly one of content and encrypted_content")
    profile = _general(
        "Configuration",
        identifier=identifier,
        display_name=display_name,
        organization=organization,
        description=description,
    )
    if content is not None:
        profile["PayloadContent"] = list(content)
    else:
        assert encrypted_content is not None
        profile["EncryptedPayloadContent"] = bytes(encrypted_content)
    if expiration_date is not None:
        if expiration_date.tzinfo is not None:
            # Python 3.11's plistlib writes the wall-clock fields and ignores the zone.
            expiration_date = expiration_date.astimezone(UTC).replace(tzinfo=None)
        profile["PayloadExpirationDate"] = expiration_date
    if removal_disallowed is not None:
        profile["PayloadRemovalDisallowed"] = removal_disallowed
    _raise_on_errors(validate(profile))
    return profile


def _split_unescaped(text: str, separator: str) -> list[str]:
    """Split on `separator` except where a backslash escapes it; keep other escapes for later."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(text)
    for char in chars:
        if char == "\\":
            escaped = next(chars, None)
            if escaped is None:
                raise ValueError("subject ends with a lone backslash")
            current.append(char + escaped)
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        char = match.group(1)
        if char not in "/+=\\":
            raise ValueError(f"unknown escape \\{char} in subject (escape only / + = \\)")
        return char

    return re.sub(r"\\(.)", replace, text, flags=re.DOTALL)


def parse_subject(template: str) -> list[list[list[str]]]:
    """Turn ``O=ACME Inc./CN=$UDID`` (an optional leading ``/``) into Apple's Subject array.

    ``+`` joins attributes into one multi-valued name component; ``\\/``, ``\\+``, ``\\=`` and
    ``\\\\`` stand for the literal characters.
    """
    if not template.strip():
        raise ValueError("empty subject")
    components = _split_unescaped(template, "/")
    if template.startswith("/"):
        components = components[1:]
    subject: list[list[list[str]]] = []
    for component in components:
        if not component.strip():
            raise ValueError(f"empty component in subject {template!r}")
        rdn: list[list[str]] = []
        for attribute in _split_unescaped(component, "+"):
            pieces = _split_unescaped(attribute, "=")
            if len(pieces) < 2:
                raise ValueError(f"{_unescape(attribute)!r} in subject is not ATTRIBUTE=value")
            name = _unescape(pieces[0]).strip()
            value = _unescape("=".join(pieces[1:])).strip()
            if name not in SUBJECT_ATTRIBUTES and not _OID_FORM.match(name):
                raise ValueError(f"unknown subject attribute {name!r}: use one of {', '.join(SUBJECT_ATTRIBUTES)} or a dotted OID")
            if not value:
                raise ValueError(f"empty value for {name} in subject")
            rdn.append([name, value])
        subject.append(rdn)
    return subject
