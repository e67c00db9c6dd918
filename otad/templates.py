"""Phase-3 configuration templates: payload files with $VARIABLES, chosen per device and rendered.

Templates are checked once, when loaded, so a bad file stops the daemon instead of a device.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from otad.payloads import PlistError, load_plist, new_uuid, validate_payloads

VARIABLES = (
    "UDID",
    "SERIAL",
    "PRODUCT",
    "VERSION",
    "DEVICE_NAME",
    "USERNAME",
    "SCEP_URL",
    "SCEP_CHALLENGE",
    "INTRANET_URL",
    "ORGANIZATION",
    "BASE_URL",
)
SUFFIXES = (".plist", ".mobileconfig")
# The template otad falls back to when the configured directory holds none.
DEFAULT_DIRECTORY = Path(__file__).parent / "profiles"

# $$ (a literal $), ${NAME}, $NAME, or a $ that starts none of these.
_PLACEHOLDER = re.compile(r"\$(?:(?P<escape>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*)|)")
_OWN_FORM_KEYS = ("Match", "PayloadContent")


class TemplateError(ValueError):
    """A template file is unusable, or no template fits a device."""


@dataclass(frozen=True)
class Template:
    """The payloads of one template file and the device attributes it is meant for."""

    name: str
    payloads: tuple[dict[str, Any], ...]
    # Device attribute -> required prefix of its value; empty matches every device.
    match: Mapping[str, str] = field(default_factory=dict)


def _strings(value: object, path: str) -> Iterator[tuple[str, str]]:
    """Yield (key path, text) for every string value below `value`; keys are not values."""
    stack: list[tuple[object, str]] = [(value, path)]
    while stack:
        item, here = stack.pop()
        if isinstance(item, str):
            yield here, item
        elif isinstance(item, dict):
            for key, child in reversed(list(item.items())):
                stack.append((child, f"{here}.{key}" if here else str(key)))
        elif isinstance(item, (list, tuple)):
            for index in reversed(range(len(item))):
                stack.append((item[index], f"{here}[{index}]"))


def _variables(text: str) -> Iterator[str | None]:
    """Yield each variable name used in `text`, or None for a $ that names nothing."""
    for placeholder in _PLACEHOLDER.finditer(text):
        if placeholder.group("escape"):
            continue
        name = placeholder.group("braced")
        if name is None:
            name = placeholder.group("named")
        yield name


def _substitute(text: str, values: Mapping[str, str]) -> str:
    def replace(placeholder: re.Match[str]) -> str:
        if placeholder.group("escape"):
            return "$"
        name = placeholder.group("braced")
        if name is None:
            name = placeholder.group("named")
        if name is None:
            return "$"
        return values.get(name, "")

    return _PLACEHOLDER.sub(replace, text)


def _render_value(value: Any, values: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return _substitute(value, values)
    if isinstance(value, dict):
        return {key: _render_value(item, values) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_render_value(item, values) for item in value]
    return copy.deepcopy(value)


def _check_variables(name: str, payloads: Sequence[object], prefix: str) -> None:
    for path, text in _strings(list(payloads), prefix):
        for variable in _variables(text):
            if variable is None:
                raise TemplateError(f"{name}: {path}: a $ that starts no variable (write $$ for a literal $)")
            if variable not in VARIABLES:
                raise TemplateError(f"{name}: {path}: unknown variable ${variable} (known: {', '.join(VARIABLES)})")


def _check_payloads(name: str, payloads: Sequence[object], prefix: str) -> None:
    # Rendering gives every payload a fresh PayloadUUID, so the file's own (if any) do not count.
    stamped = [{**payload, "PayloadUUID": new_uuid()} if isinstance(payload, dict) else payload for payload in payloads]
    for finding in validate_payloads(stamped, prefix):
        if finding.level == "error":
            raise TemplateError(f"{name}: {finding.path}: {finding.message}")


def _match(name: str, match: object) -> dict[str, str]:
    if not isinstance(match, dict):
        raise TemplateError(f"{name}: Match: must be <dict> of attribute -> prefix")
    for attribute, prefix in match.items():
        if not isinstance(prefix, str):
            raise TemplateError(f"{name}: Match.{attribute}: must be <string>")
    return dict(match)


def _parse(name: str, data: bytes) -> Template:
    if data[:1] == b"\x30":
        raise TemplateError(f"{name}: signed .mobileconfig: export it unsigned")
    try:
        document = load_plist(data)
    except PlistError as e:
        raise TemplateError(f"{name}: not a property list: {e}") from None

    match: dict[str, str] = {}
    payloads: object
    if isinstance(document, list):
        payloads, prefix = document, ""
    elif isinstance(document, dict) and document.get("PayloadType") == "Configuration":
        # A whole profile, as Apple Configurator exports it: only its payloads are used.
        if "EncryptedPayloadContent" in document:
            raise TemplateError(f"{name}: encrypted profile: export it unencrypted")
        payloads, prefix = document.get("PayloadContent"), "PayloadContent"
        if "Match" in document:
            match = _match(name, document["Match"])
    elif isinstance(document, dict) and "PayloadType" not in document:
        for key in document:
            if key not in _OWN_FORM_KEYS:
                raise TemplateError(f"{name}: {key}: unknown key (a template has Match and PayloadContent)")
        payloads, prefix = document.get("PayloadContent"), "PayloadContent"
        match = _match(name, document.get("Match", {}))
    elif isinstance(document, dict):
        raise TemplateError(f"{name}: a single {document['PayloadType']!r} payload: put it in a PayloadContent array")
    else:
        raise TemplateError(f"{name}: must be a payload array or a dictionary")

    if not isinstance(payloads, list):
        raise TemplateError(f"{name}: {prefix or 'top level'}: must be an array of payloads")
    _check_payloads(name, payloads, prefix)
    _check_variables(name, payloads, prefix)
    return Template(name=name, payloads=tuple(payloads), match=match)


def load_templates(directory: Path) -> list[Template]:
    """Load every *.plist and *.mobileconfig in `directory`, sorted by file name."""
    try:
        files = sorted(
            (p for p in directory.iterdir() if p.suffix in SUFFIXES and p.is_file()),
            key=lambda p: p.name,
        )
    except OSError as e:
        raise TemplateError(f"{directory}: cannot list templates: {e.strerror}") from None
    if not files:
        raise TemplateError(f"{directory}: no *.plist or *.mobileconfig templates")
    templates = []
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise TemplateError(f"{path.name}: cannot read: {e.strerror}") from None
        templates.append(_parse(path.name, data))
    return templates


def _matches(template: Template, attributes: Mapping[str, object]) -> bool:
    for attribute, prefix in template.match.items():
        value = attributes.get(attribute)
        if not (isinstance(value, str) and value.startswith(prefix)):
            return False
    return True


def select(templates: Sequence[Template], attributes: Mapping[str, object]) -> Template:
    """Return the first template whose every Match prefix starts the device's attribute."""
    for template in templates:
        if _matches(template, attributes):
            return template
    named = sorted({attribute for t in templates for attribute in t.match})
    seen = ", ".join(f"{a}={attributes.get(a)!r}" for a in named)
    raise TemplateError(f"no template matches this device ({seen}); add one without Match as a fallback")


def render(template: Template, values: Mapping[str, str]) -> list[dict[str, Any]]:
    """Substitute `values` into a copy of the template's payloads, each with a fresh PayloadUUID.

    Missing values become empty strings; keys, data and numbers are left alone.
    """
    rendered = []
    for payload in template.payloads:
        copied: dict[str, Any] = _render_value(payload, values)
        copied["PayloadUUID"] = new_uuid()
        rendered.append(copied)
    return rendered


def needs_scep_challenge(template: Template) -> bool:
    """Whether the template uses $SCEP_CHALLENGE, so the server must mint a one-time challenge."""
    return any(variable == "SCEP_CHALLENGE" for _, text in _strings(list(template.payloads), "") for variable in _variables(text))
