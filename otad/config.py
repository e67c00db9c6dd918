"""Turns ``etc/otad.conf`` plus command-line overrides into one validated, immutable Config.

Every section and key is checked against an allowed list, so a typo stops the start with a
one-line error naming the key instead of being silently ignored.
"""

from __future__ import annotations

import configparser
import ipaddress
import re
import socket
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from otad import listeners
from otad.listeners import Listener


class ConfigError(ValueError):
    """A bad configuration; str() is one line that names the offending key."""


_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """Seconds from ``90``, ``90s``, ``15m``, ``1h`` or ``365d``."""
    match = _DURATION.match(text)
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"not a positive duration like 15m, 1h or 365d: {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def _listen(text: str | tuple[str, ...]) -> tuple[str, ...]:
    descriptions = tuple(text.split()) if isinstance(text, str) else tuple(text)
    if not descriptions:
        raise ValueError("at least one endpoint is needed")
    for description in descriptions:
        try:
            listeners.parse(description)
        except ValueError as error:
            raise ValueError(f"{description!r}: {error}") from None
    return descriptions


def _choice(*allowed: str) -> Callable[[str], str]:
    def check(text: str) -> str:
        value = text.strip()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}, not {value!r}")
        return value

    return check


def _int_in(*allowed: int) -> Callable[[str], int]:
    def check(text: str) -> int:
        value = int(text)
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(map(str, allowed))}")
        return value

    return check


def _int_range(low: int, high: int) -> Callable[[str], int]:
    def check(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return check


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("yes", "true", "on", "1"):
        return True
    if lowered in ("no", "false", "off", "0"):
        return False
    raise ValueError(f"must be yes or no, not {text!r}")


def _public_url(text: str) -> str:
    url = text.strip().rstrip("/")
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.query:
        raise ValueError(f"must be an http(s) URL with no query, like https://otad.example.com:8443, not {text!r}")
    return url


def _identifier(text: str) -> str:
    value = text.strip()
    if not re.fullmatch(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+", value):
        raise ValueError(f"must be a reverse-DNS identifier like com.example.otad, not {text!r}")
    return value


def _realm(text: str) -> str:
    value = _nonempty(text)
    if not re.fullmatch(r"[\x20-\x7e]+", value) or '"' in value or "\\" in value:
        raise ValueError("must be printable ASCII without quotes or backslashes")
    return value


SUBJECT_VARIABLES = ("UDID", "SERIAL", "PRODUCT", "ORGANIZATION", "USERNAME")


def _subject_template(text: str) -> str:
    value = _nonempty(text)
    template = string.Template(value)
    if not template.is_valid():
        raise ValueError("has a '$' that starts no variable (write $$ for a dollar sign)")
    unknown = set(template.get_identifiers()) - set(SUBJECT_VARIABLES)
    if unknown:
        raise ValueError(f"unknown variable ${sorted(unknown)[0]}; known: {', '.join(SUBJECT_VARIABLES)}")
    return value


KEY_USAGES = ("digitalSignature", "keyEncipherment")


def _key_usages(text: str) -> tuple[str, ...]:
    values = tuple(text.split())
    unknown = [value for value in values if value not in KEY_USAGES]
    if unknown or not values:
        raise ValueError(f"must be one or both of {', '.join(KEY_USAGES)}")
    return values


def _nonempty(text: str) -> str:
    value = text.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def _hostname(text: str) -> str:
    value = text.strip().lower()
    if not value:
        return ""  # filled in with this machine's name
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*", value):
        raise ValueError(f"not a DNS host name or IP address: {text!r}")
    return value


# section -> key -> (parser, default text). The defaults here are the embedded defaults that
# `twistd otad` runs on with no config file; etc/otad.conf documents each of them.
_SCHEMA: dict[str, dict[str, tuple[Callable[[str], object], str]]] = {
    "server": {
        "listen": (_listen, "ssl:8443"),
        "hostname": (_hostname, ""),
        "public_url": (_public_url, ""),
        "data_dir": (lambda text: text.strip(), "."),
        "htpasswd": (lambda text: text.strip(), ""),
        "organization": (_nonempty, "Example Inc."),
        "max_body": (_int_range(1024, 16 * 1024 * 1024), "65536"),
        "json_log": (lambda text: text.strip(), ""),
        "first_password": (_choice("auto", "log", "file"), "auto"),
        "crypto_threads": (_int_range(1, 64), "2"),
        "auth_threads": (_int_range(1, 64), "2"),
    },
    "enrollment": {
        "realm": (_realm, "otad"),
        "identifier": (_identifier, "com.example.otad"),
        "display_name": (_nonempty, "Example Inc. Profile Service"),
        "description": (_nonempty, "Install this profile to enroll this device with Example Inc."),
        "device_attributes": (_words, "UDID VERSION PRODUCT SERIAL IMEI MEID"),
        "challenge_ttl": (parse_duration, "15m"),
        "scep_subject": (_subject_template, "O=$ORGANIZATION/CN=$UDID"),
        "keysize": (_int_in(1024, 2048, 4096), "2048"),
        "scep_challenge_ttl": (parse_duration, "1h"),
        "identity": (_choice("scep", "pkcs12"), "scep"),
        "on_repeat": (_choice("update", "redirect"), "update"),
    },
    "profile": {
        "templates": (lambda text: text.strip(), ""),
        "intranet_url": (_public_url, "https://intranet.example.com"),
        "expiration": (lambda text: parse_duration(text) if text.strip() else 0, ""),
        "removal_disallowed": (_boolean, "no"),
    },
    "scep": {
        "capabilities": (_words, "POSTPKIOperation SHA-256 SHA-384 SHA-512 AES DES3 SCEPStandard Renewal"),
        "cert_validity": (parse_duration, "365d"),
        "min_key_size": (_int_in(1024, 2048, 3072, 4096), "2048"),
        "allow_legacy_1024": (_boolean, "no"),
        "ca_cert_format": (_choice("ca-ra", "ca"), "ca-ra"),
        "key_usage": (_key_usages, "digitalSignature keyEncipherment"),
        "subject_alt_names": (_choice("drop", "copy"), "drop"),
        "approval": (_choice("auto", "manual"), "auto"),
    },
    "device": {
        "policy": (_choice("strict", "log", "off"), "strict"),
        "anchors": (lambda text: text.strip(), ""),
    },
    "ca": {
        "key_size": (_int_in(3072, 4096), "3072"),
        "common_name": (lambda text: text.strip(), ""),
    },
}


@dataclass(frozen=True)
class Config:
    """Every setting otad reads, validated; paths are absolute."""

    listen: tuple[str, ...] = ("ssl:8443",)
    hostname: str = "localhost"
    public_url: str = ""
    data_dir: Path = Path(".")
    htpasswd: Path = Path("htpasswd")
    organization: str = "Example Inc."
    max_body: int = 65536
    json_log: Path | None = None
    first_password: str = "auto"
    crypto_threads: int = 2
    auth_threads: int = 2
    realm: str = "otad"
    identifier: str = "com.example.otad"
    display_name: str = "Example Inc. Profile Service"
    description: str = ""
    device_attributes: tuple[str, ...] = ()
    challenge_ttl: int = 900
    scep_subject: str = "O=$ORGANIZATION/CN=$UDID"
    keysize: int = 2048
    scep_challenge_ttl: int = 3600
    identity: str = "scep"
    on_repeat: str = "update"
    templates: Path | None = None
    intranet_url: str = ""
    profile_expiration: int = 0
    removal_disallowed: bool = False
    scep_capabilities: tuple[str, ...] = ()
    cert_validity: int = 365 * 86400
    min_key_size: int = 2048
    ca_cert_format: str = "ca-ra"
    allowed_key_usage: tuple[str, ...] = KEY_USAGES
    copy_subject_alt_names: bool = False
    manual_approval: bool = False
    device_policy: str = "strict"
    device_anchors: Path | None = None
    ca_key_size: int = 3072
    ca_common_name: str = ""

    @property
    def certs_dir(self) -> Path:
        return self.data_dir / "certs"

    @property
    def database(self) -> Path:
        return self.data_dir / "otad.sqlite"

    @property
    def first_password_file(self) -> Path:
        """Where the first user's password is kept (mode 0600) until it is used or changed."""
        return self.data_dir / "first-password"

    @property
    def listeners(self) -> tuple[Listener, ...]:
        return tuple(listeners.parse(description) for description in self.listen)


def default_hostname() -> str:
    """The machine's short host name, lower-cased: what devices on the LAN most likely use."""
    try:
        return _hostname(socket.gethostname())
    except ValueError:
        return "localhost"


def load(path: Path | None = None, overrides: Mapping[str, object] | None = None) -> Config:
    """Read the ini file (if any), apply command-line overrides, and validate everything.

    ``overrides`` uses Config field names (``listen``, ``data_dir``, ``hostname``, ``htpasswd``…);
    a value of None means "not given on the command line".
    """
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"))
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    if path is not None:
        try:
            with open(path, encoding="utf-8") as handle:
                parser.read_file(handle)
        except OSError as error:
            raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
        except (configparser.Error, UnicodeDecodeError) as error:
            first_line = str(error).splitlines()[0]
            raise ConfigError(f"config file {path} is not valid ini: {first_line}") from None
    values: dict[str, dict[str, object]] = {}
    for section in parser.sections():
        if section not in _SCHEMA:
            raise ConfigError(f"unknown config section [{section}]")
    for section, keys in _SCHEMA.items():
        given = parser[section] if parser.has_section(section) else {}
        for key in given:
            if key not in keys:
                raise ConfigError(f"unknown config key [{section}] {key}")
        values[section] = {}
        for key, (convert, default) in keys.items():
            text = given.get(key, default)
            try:
                values[section][key] = convert(text)
            except ValueError as error:
                raise ConfigError(f"bad value for [{section}] {key}: {error}") from None
    server, enrollment, ca, device = values["server"], values["enrollment"], values["ca"], values["device"]
    scep, profile = values["scep"], values["profile"]
    if scep["min_key_size"] == 1024 and not scep["allow_legacy_1024"]:
        raise ConfigError("bad value for [scep] min_key_size: 1024 needs allow_legacy_1024 = yes")
    for key, value in (overrides or {}).items():
        if value is None or value == () or value == []:
            continue
        if key == "device_ca":
            values["device"]["anchors"] = str(value)
            continue
        if key not in ("listen", "data_dir", "hostname", "htpasswd"):
            raise ConfigError(f"unknown override {key}")
        try:
            server[key] = _SCHEMA["server"][key][0](value)  # type: ignore[arg-type]
        except ValueError as error:
            raise ConfigError(f"bad value for --{key.replace('_', '-')}: {error}") from None
    if "UDID" not in enrollment["device_attributes"]:  # type: ignore[operator]
        raise ConfigError("bad value for [enrollment] device_attributes: UDID is required")
    data_dir = Path(str(server["data_dir"])).expanduser().absolute()
    htpasswd = Path(str(server["htpasswd"])) if server["htpasswd"] else data_dir / "htpasswd"
    json_log = Path(str(server["json_log"])).absolute() if server["json_log"] else None
    organization = str(server["organization"])
    return Config(
        listen=tuple(server["listen"]),  # type: ignore[arg-type]
        hostname=str(server["hostname"]) or default_hostname(),
        public_url=str(server["public_url"]),
        data_dir=data_dir,
        htpasswd=htpasswd.expanduser().absolute(),
        organization=organization,
        max_body=int(server["max_body"]),  # type: ignore[call-overload]
        json_log=json_log,
        first_password=str(server["first_password"]),
        crypto_threads=int(server["crypto_threads"]),  # type: ignore[call-overload]
        auth_threads=int(server["auth_threads"]),  # type: ignore[call-overload]
        realm=str(enrollment["realm"]),
        identifier=str(enrollment["identifier"]),
        display_name=str(enrollment["display_name"]),
        description=str(enrollment["description"]),
        device_attributes=tuple(enrollment["device_attributes"]),  # type: ignore[arg-type]
        challenge_ttl=int(enrollment["challenge_ttl"]),  # type: ignore[call-overload]
        scep_subject=str(enrollment["scep_subject"]),
        keysize=int(enrollment["keysize"]),  # type: ignore[call-overload]
        scep_challenge_ttl=int(enrollment["scep_challenge_ttl"]),  # type: ignore[call-overload]
        identity=str(enrollment["identity"]),
        on_repeat=str(enrollment["on_repeat"]),
        templates=Path(str(profile["templates"])).expanduser().absolute() if profile["templates"] else None,
        intranet_url=str(profile["intranet_url"]),
        profile_expiration=int(profile["expiration"]),  # type: ignore[call-overload]
        removal_disallowed=bool(profile["removal_disallowed"]),
        scep_capabilities=tuple(scep["capabilities"]),  # type: ignore[arg-type]
        cert_validity=int(scep["cert_validity"]),  # type: ignore[call-overload]
        min_key_size=int(scep["min_key_size"]),  # type: ignore[call-overload]
        ca_cert_format=str(scep["ca_cert_format"]),
        allowed_key_usage=tuple(scep["key_usage"]),  # type: ignore[arg-type]
        copy_subject_alt_names=scep["subject_alt_names"] == "copy",
        manual_approval=scep["approval"] == "manual",
        device_policy=str(device["policy"]),
        device_anchors=Path(str(device["anchors"])).expanduser().absolute() if device["anchors"] else None,
        ca_key_size=int(ca["key_size"]),  # type: ignore[call-overload]
        ca_common_name=str(ca["common_name"]) or f"{organization} otad Root CA",
    )
