"""Turns ``etc/otad.conf`` plus command-line overrides into one validated, immutable Config.

Every section and key is checked against an allowed list, so a typo stops the start with a
one-line error naming the key instead of being silently ignored.
"""

from __future__ import annotations

import configparser
import ipaddress
import os
import re
import socket
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ldaptor.ldapfilter import InvalidLDAPFilter, parseFilter
from ldaptor.protocols.ldap.distinguishedname import DistinguishedName, InvalidRelativeDistinguishedName

from otad import listeners
from otad.listeners import Listener
from otad.tls import INTERMEDIATE_CIPHERS, check_ciphers


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


def _metrics_listen(text: str) -> tuple[str, ...]:
    """The operator's listener: plain HTTP (tcp: or unix:), or nothing (off)."""
    descriptions = tuple(text.split())
    for description in descriptions:
        try:
            listener = listeners.parse(description)
        except ValueError as error:
            raise ValueError(f"{description!r}: {error}") from None
        if listener.tls:
            raise ValueError(f"{description!r}: the metrics listener serves plain HTTP: use tcp:PORT:interface=127.0.0.1 or unix:PATH")
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


def _workers(text: str) -> int:
    """A number of worker processes, or ``auto`` for one per core."""
    if text.strip() == "auto":
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    value = int(text)
    if not 1 <= value <= 64:
        raise ValueError("must be auto or between 1 and 64")
    return value


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


def _scep_url(text: str) -> str:
    url = _public_url(text)
    if url and not url.endswith("/scep"):
        raise ValueError(f"must end in /scep, like http://otad.example.com:8080/scep, not {text!r}")
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


_DNS_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")


def _hostname(text: str) -> str:
    value = text.strip().lower()
    if not value:
        return default_hostname()
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not _DNS_NAME.fullmatch(value):
        raise ValueError(f"not a DNS host name or IP address: {text!r}")
    return value


def _path(text: str) -> Path | None:
    """An absolute path, or None for an empty value."""
    value = text.strip()
    return Path(value).expanduser().absolute() if value else None


def _data_dir(text: str) -> Path:
    return Path(text.strip() or ".").expanduser().absolute()


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(text: str) -> tuple[Network, ...]:
    """Addresses or CIDR networks, IPv4 and IPv6, separated by spaces or commas; an address is a network of one."""
    networks = []
    for word in text.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(word, strict=True))
        except ValueError as error:
            reason = "it has host bits set" if "host bits" in str(error) else "it is not an IP address or network"
            raise ValueError(f"{word!r}: {reason} (write addresses like 127.0.0.1 or ::1, networks like 10.0.0.0/8)") from None
    return tuple(networks)


def _optional_duration(text: str) -> int:
    return parse_duration(text) if text.strip() else 0


def _text(text: str) -> str:
    return text.strip()


def _store_url(text: str) -> str:
    value = text.strip()
    if value and not value.startswith(("postgresql://", "postgres://")):
        # Not echoed: the URL may hold a password.
        raise ValueError("must be empty (SQLite in the data directory) or a postgresql:// URL")
    return value


def _tls_ciphers(text: str) -> str:
    return check_ciphers(text.strip())


def _ldap_url(text: str) -> str:
    """``ldap://host[:port]`` or ``ldaps://host[:port]``, or empty; nothing after the host but an optional ``/``."""
    url = text.strip()
    if not url:
        return ""
    parts = urlsplit(url)
    try:
        _ = parts.port  # urllib checks the port only when asked
    except ValueError:
        raise ValueError(f"bad port in {text!r}") from None
    if parts.scheme not in ("ldap", "ldaps") or not parts.hostname or parts.path not in ("", "/") or parts.query or parts.username:
        raise ValueError(f"must be ldap://HOST[:PORT] or ldaps://HOST[:PORT], not {text!r}")
    return url.rstrip("/")


def _user_template(check: Callable[[str], object]) -> Callable[[str], str]:
    """A template with ``{user}`` where the escaped user name goes, and no other ``{...}``; ``check`` parses a sample."""

    def parse(text: str) -> str:
        value = text.strip()
        if not value:
            return ""
        if "{user}" not in value:
            raise ValueError("must contain {user}, where the user name goes")
        try:
            sample = value.format(user="x")
        except (KeyError, IndexError, ValueError):
            raise ValueError("has a '{' or '}' other than {user} (write {{ or }} for a brace)") from None
        check(sample)
        return value

    return parse


def _dn(text: str) -> str:
    """A distinguished name (RFC 4514), or empty."""
    value = text.strip()
    if not value:
        return ""
    try:
        name = DistinguishedName(stringValue=value)
    except (InvalidRelativeDistinguishedName, IndexError, ValueError):
        name = None
    # ldaptor's parser lets empty RDNs and attribute types through; a directory would not.
    pairs = [rdn.attributeTypesAndValues for rdn in name.listOfRDNs] if name is not None else []
    if not pairs or not all(rdn and all(pair.attributeType for pair in rdn) for rdn in pairs):
        raise ValueError(f"not a distinguished name like ou=people,dc=example,dc=org: {text!r}")
    return value


def _ldap_filter(text: str) -> str:
    """An LDAP search filter (RFC 4515)."""
    try:
        parseFilter(text)
    except InvalidLDAPFilter:
        raise ValueError(f"not an LDAP filter like (uid={{user}}): {text!r}") from None
    return text


@dataclass(frozen=True)
class Setting:
    """Where a Config field comes from: ``[section] key`` of the ini file, its parser and its default text."""

    section: str
    key: str
    parse: Callable[[str], Any]
    default: str


def _setting(section: str, key: str, parse: Callable[[str], Any], default: str) -> Any:
    return field(metadata={"setting": Setting(section, key, parse, default)})


@dataclass(frozen=True, kw_only=True)
class Config:
    """Every setting otad reads, validated; paths are absolute.

    Each field names its ini key, parser and default text: this is the one schema. The defaults
    are what ``twistd otad`` runs on with no config file, and etc/otad.conf is checked against
    them by the tests rather than kept in step by hand.
    """

    listen: tuple[str, ...] = _setting("server", "listen", _listen, "ssl:8443")
    hostname: str = _setting("server", "hostname", _hostname, "")
    public_url: str = _setting("server", "public_url", _public_url, "")
    data_dir: Path = _setting("server", "data_dir", _data_dir, ".")
    # None in the file means DATA_DIR/htpasswd; load() fills it in.
    htpasswd: Path = _setting("server", "htpasswd", _path, "")
    organization: str = _setting("server", "organization", _nonempty, "Example Inc.")
    max_body: int = _setting("server", "max_body", _int_range(1024, 16 * 1024 * 1024), "65536")
    json_log: Path | None = _setting("server", "json_log", _path, "")
    first_password: str = _setting("server", "first_password", _choice("auto", "log", "file"), "auto")
    trusted_proxies: tuple[Network, ...] = _setting("server", "trusted_proxies", _networks, "")
    proxy_headers: str = _setting("server", "proxy_headers", _choice("x-forwarded", "forwarded"), "x-forwarded")
    crypto_threads: int = _setting("server", "crypto_threads", _int_range(1, 64), "2")
    auth_threads: int = _setting("server", "auth_threads", _int_range(1, 64), "2")
    workers: int = _setting("server", "workers", _workers, "1")
    drain_timeout: int = _setting("server", "drain_timeout", parse_duration, "10s")
    head_timeout: int = _setting("limits", "head_timeout", parse_duration, "4s")
    idle_timeout: int = _setting("limits", "idle_timeout", parse_duration, "30s")
    body_rate: int = _setting("limits", "body_rate", _int_range(64, 1 << 30), "2048")
    body_idle: int = _setting("limits", "body_idle", parse_duration, "3s")
    max_connections: int = _setting("limits", "max_connections", _int_range(1, 1_000_000), "2048")
    max_connections_per_address: int = _setting("limits", "max_connections_per_address", _int_range(1, 1_000_000), "64")
    tls_ciphers: str = _setting("tls", "ciphers", _tls_ciphers, INTERMEDIATE_CIPHERS)
    tls_min_version: str = _setting("tls", "min_version", _choice("TLSv1.2", "TLSv1.3"), "TLSv1.2")
    tls_key_type: str = _setting("tls", "key_type", _choice("rsa", "ecdsa"), "ecdsa")
    tls_certificate: Path | None = _setting("tls", "certificate", _path, "")
    tls_key: Path | None = _setting("tls", "key", _path, "")
    tls_chain: Path | None = _setting("tls", "chain", _path, "")
    auth_queue: int = _setting("auth", "queue", _int_range(0, 100_000), "16")
    bcrypt_rounds: int = _setting("auth", "bcrypt_rounds", _int_range(10, 16), "12")
    failures_per_address: int = _setting("auth", "failures_per_address", _int_range(1, 1_000_000), "20")
    failures_per_user: int = _setting("auth", "failures_per_user", _int_range(1, 1_000_000), "5")
    failure_window: int = _setting("auth", "failure_window", parse_duration, "15m")
    allow_plain_http_login: bool = _setting("auth", "allow_plain_http", _boolean, "no")
    auth_backend: str = _setting("auth", "backend", _choice("htpasswd", "ldap"), "htpasswd")
    ldap_url: str = _setting("ldap", "url", _ldap_url, "")
    ldap_starttls: bool = _setting("ldap", "starttls", _boolean, "yes")
    ldap_allow_plain: bool = _setting("ldap", "allow_plain", _boolean, "no")
    ldap_ca_file: Path | None = _setting("ldap", "ca_file", _path, "")
    ldap_bind_dn: str = _setting("ldap", "bind_dn", _user_template(_dn), "")
    ldap_search_base: str = _setting("ldap", "search_base", _dn, "")
    ldap_search_filter: str = _setting("ldap", "search_filter", _user_template(_ldap_filter), "(uid={user})")
    ldap_service_dn: str = _setting("ldap", "service_dn", _dn, "")
    ldap_service_password_file: Path | None = _setting("ldap", "service_password_file", _path, "")
    ldap_group: str = _setting("ldap", "group", _dn, "")
    ldap_group_attribute: str = _setting("ldap", "group_attribute", _choice("member", "uniqueMember"), "member")
    ldap_connect_timeout: int = _setting("ldap", "connect_timeout", parse_duration, "5s")
    ldap_timeout: int = _setting("ldap", "timeout", parse_duration, "10s")
    ldap_connections: int = _setting("ldap", "connections", _int_range(1, 1024), "8")
    realm: str = _setting("enrollment", "realm", _realm, "otad")
    identifier: str = _setting("enrollment", "identifier", _identifier, "com.example.otad")
    display_name: str = _setting("enrollment", "display_name", _nonempty, "Example Inc. Profile Service")
    description: str = _setting("enrollment", "description", _nonempty, "Install this profile to enroll this device with Example Inc.")
    device_attributes: tuple[str, ...] = _setting("enrollment", "device_attributes", _words, "UDID VERSION PRODUCT SERIAL IMEI MEID")
    challenge_ttl: int = _setting("enrollment", "challenge_ttl", parse_duration, "15m")
    scep_subject: str = _setting("enrollment", "scep_subject", _subject_template, "O=$ORGANIZATION/CN=$UDID")
    keysize: int = _setting("enrollment", "keysize", _int_in(1024, 2048, 4096), "2048")
    scep_url: str = _setting("enrollment", "scep_url", _scep_url, "")
    scep_challenge_ttl: int = _setting("enrollment", "scep_challenge_ttl", parse_duration, "1h")
    identity: str = _setting("enrollment", "identity", _choice("scep", "pkcs12"), "scep")
    on_repeat: str = _setting("enrollment", "on_repeat", _choice("update", "redirect"), "update")
    templates: Path | None = _setting("profile", "templates", _path, "")
    intranet_url: str = _setting("profile", "intranet_url", _public_url, "https://intranet.example.com")
    profile_expiration: int = _setting("profile", "expiration", _optional_duration, "")
    removal_disallowed: bool = _setting("profile", "removal_disallowed", _boolean, "no")
    scep_capabilities: tuple[str, ...] = _setting(
        "scep", "capabilities", _words, "POSTPKIOperation SHA-256 SHA-384 SHA-512 AES DES3 SCEPStandard Renewal"
    )
    cert_validity: int = _setting("scep", "cert_validity", parse_duration, "365d")
    min_key_size: int = _setting("scep", "min_key_size", _int_in(1024, 2048, 3072, 4096), "2048")
    allow_legacy_1024: bool = _setting("scep", "allow_legacy_1024", _boolean, "no")
    ca_cert_format: str = _setting("scep", "ca_cert_format", _choice("ca-ra", "ca"), "ca-ra")
    ra_layout: str = _setting("scep", "ra_layout", _choice("ndes", "single"), "ndes")
    revoke_on_renew: bool = _setting("scep", "revoke_on_renew", _boolean, "no")
    allowed_key_usage: tuple[str, ...] = _setting("scep", "key_usage", _key_usages, "digitalSignature keyEncipherment")
    copy_subject_alt_names: bool = _setting("scep", "subject_alt_names", lambda text: _choice("drop", "copy")(text) == "copy", "drop")
    manual_approval: bool = _setting("scep", "approval", lambda text: _choice("auto", "manual")(text) == "manual", "auto")
    device_policy: str = _setting("device", "policy", _choice("strict", "log", "off"), "strict")
    device_anchors: Path | None = _setting("device", "anchors", _path, "")
    ca_key_size: int = _setting("ca", "key_size", _int_in(3072, 4096), "3072")
    publish_url: str = _setting("ca", "publish_url", _public_url, "")
    crl_check: int = _setting("ca", "crl_check", parse_duration, "1m")
    metrics_listen: tuple[str, ...] = _setting("metrics", "listen", _metrics_listen, "")
    # Empty means "<organization> otad Root CA"; load() fills it in.
    ca_common_name: str = _setting("ca", "common_name", _text, "")
    store_url: str = _setting("store", "url", _store_url, "")
    store_connections: int = _setting("store", "connections", _int_range(1, 64), "4")

    @property
    def certs_dir(self) -> Path:
        return self.data_dir / "certs"

    @property
    def database(self) -> Path:
        """The SQLite file (used when ``[store] url`` is empty)."""
        return self.data_dir / "otad.sqlite"

    @property
    def store_location(self) -> Path | str:
        """Where the state is: the ``[store] url`` (PostgreSQL), or the SQLite file in the data directory."""
        return self.store_url or self.database

    @property
    def first_password_file(self) -> Path:
        """Where the first user's password is kept (mode 0600) until it is used or changed."""
        return self.data_dir / "first-password"

    @property
    def listeners(self) -> tuple[Listener, ...]:
        return tuple(listeners.parse(description) for description in self.listen)

    @property
    def metrics_listeners(self) -> tuple[Listener, ...]:
        return tuple(listeners.parse(description) for description in self.metrics_listen)


def settings_schema() -> dict[str, dict[str, Setting]]:
    """Section -> key -> Setting, for every key the ini file may hold."""
    schema: dict[str, dict[str, Setting]] = {}
    for entry in fields(Config):
        setting: Setting = entry.metadata["setting"]
        schema.setdefault(setting.section, {})[setting.key] = setting
    return schema


# Command-line flags, by the Config field they set.
_FLAGS = {
    "listen": "--listen",
    "data_dir": "--data-dir",
    "hostname": "--hostname",
    "htpasswd": "--htpasswd",
    "device_anchors": "--device-ca",
}


def default_hostname() -> str:
    """The machine's short host name, lower-cased: what devices on the LAN most likely use."""
    name = socket.gethostname().strip().lower()
    return name if _DNS_NAME.fullmatch(name) else "localhost"


def _read_ini(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"))
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    except (configparser.Error, UnicodeDecodeError) as error:
        first_line = str(error).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid ini: {first_line}") from None
    schema = settings_schema()
    for section in parser.sections():
        if section not in schema:
            raise ConfigError(f"unknown config section [{section}]")
        for key in parser[section]:
            if key not in schema[section]:
                raise ConfigError(f"unknown config key [{section}] {key}")
    return parser


def _check_ldap(values: dict[str, Any]) -> None:
    """With ``[auth] backend = ldap``, the [ldap] settings must make one complete way of binding."""
    if not values["ldap_url"]:
        raise ConfigError("bad value for [ldap] url: [auth] backend = ldap needs the directory's ldaps:// or ldap:// URL")
    if bool(values["ldap_bind_dn"]) == bool(values["ldap_search_base"]):
        raise ConfigError("bad value for [ldap] bind_dn: set either bind_dn (a DN template) or search_base (search, then bind), not both")
    if values["ldap_search_base"] and not (values["ldap_service_dn"] and values["ldap_service_password_file"]):
        raise ConfigError("bad value for [ldap] service_dn: search_base needs service_dn and service_password_file to search with")
    if values["ldap_url"].startswith("ldap://") and not values["ldap_starttls"] and not values["ldap_allow_plain"]:
        raise ConfigError("bad value for [ldap] starttls: no sends passwords to ldap:// in clear text; that needs allow_plain = yes")


def load(path: Path | None = None, overrides: Mapping[str, object] | None = None) -> Config:
    """Read the ini file (if any), apply command-line overrides, and validate everything.

    ``overrides`` uses Config field names (``listen``, ``data_dir``, ``hostname``, ``htpasswd``,
    ``device_ca`` for ``device_anchors``); a value of None (or empty) means "not given on the command line".
    """
    parser = _read_ini(path) if path is not None else None
    given = {
        ("device_anchors" if key == "device_ca" else key): value for key, value in (overrides or {}).items() if value not in (None, (), [])
    }
    for name in given:
        if name not in _FLAGS:
            raise ConfigError(f"unknown override {name}")
    values: dict[str, Any] = {}
    for entry in fields(Config):
        setting: Setting = entry.metadata["setting"]
        if entry.name in given:
            value, where = given[entry.name], _FLAGS[entry.name]
            text: Any = tuple(value) if isinstance(value, (list, tuple)) else str(value)
        else:
            text = parser.get(setting.section, setting.key, fallback=setting.default) if parser else setting.default
            where = f"[{setting.section}] {setting.key}"
        try:
            values[entry.name] = setting.parse(text)
        except ValueError as error:
            raise ConfigError(f"bad value for {where}: {error}") from None
    if values["min_key_size"] == 1024 and not values["allow_legacy_1024"]:
        raise ConfigError("bad value for [scep] min_key_size: 1024 needs allow_legacy_1024 = yes")
    if "UDID" not in values["device_attributes"]:
        raise ConfigError("bad value for [enrollment] device_attributes: UDID is required")
    if values["auth_backend"] == "ldap":
        _check_ldap(values)
    if (values["tls_key"] or values["tls_chain"]) and not values["tls_certificate"]:
        raise ConfigError("bad value for [tls] key and chain: they need [tls] certificate (the certificate file)")
    if values["tls_certificate"] and not any(listeners.parse(description).tls for description in values["listen"]):
        raise ConfigError("bad value for [tls] certificate: no ssl: listener would serve it")
    values["htpasswd"] = values["htpasswd"] or values["data_dir"] / "htpasswd"
    values["ca_common_name"] = values["ca_common_name"] or f"{values['organization']} otad Root CA"
    return Config(**values)
