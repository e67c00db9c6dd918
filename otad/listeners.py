"""``[server] listen`` / ``--listen``: strports descriptions, checked when the configuration is read.

Checking them with the rest of the configuration means a typo stops the start before any key
is generated, with a message that names the option. otad serves TLS itself (its own
certificate, reloaded when renewed), so an ``ssl:`` description becomes a TCP endpoint wrapped
in otad's TLS; ``tcp:`` and ``unix:`` serve plain HTTP.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from twisted.internet import endpoints
from twisted.internet.interfaces import IStreamServerEndpoint

_TCP_OPTIONS = ("port", "interface", "backlog")
_TLS_FILES = {"privateKey": "key", "certKey": "certificate", "extraCertChain": "chain"}
_UNIX_OPTIONS = ("address", "mode", "lockfile", "backlog")


@dataclass(frozen=True)
class Listener:
    """One validated listen description."""

    description: str
    # The endpoint otad listens on (for ssl:, the TCP endpoint under otad's TLS).
    plain: str
    tls: bool
    # Operator-supplied TLS files (certKey=, privateKey=, extraCertChain=); empty for otad's own.
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def endpoint(self, reactor: object) -> IStreamServerEndpoint:
        return endpoints.serverFromString(reactor, self.plain)


def _split(description: str) -> list[str]:
    """The ``:``-separated fields of a strports description, with ``\\`` escapes removed."""
    fields, current, escaped = [], [], False
    for character in description:
        if escaped:
            current.append(character)
            escaped = False
        elif character == "\\":
            escaped = True
        elif character == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(character)
    if escaped:
        raise ValueError("ends with a lone backslash")
    fields.append("".join(current))
    return fields


def _options(fields: list[str], positional: tuple[str, ...]) -> dict[str, str]:
    options: dict[str, str] = {}
    for index, text in enumerate(fields):
        key, equals, value = text.partition("=")
        if not equals:
            if index >= len(positional):
                raise ValueError(f"unexpected field {text!r}")
            key, value = positional[index], text
        if key in options:
            raise ValueError(f"{key} is given twice")
        options[key] = value
    return options


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ValueError(f"port must be a number from 0 to 65535, not {text!r}")
    return int(text)


def _tcp(options: dict[str, str], allowed: tuple[str, ...]) -> str:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r} (known: {', '.join(allowed)})")
    if "port" not in options:
        raise ValueError("needs a port")
    parts = [f"tcp:{_port(options['port'])}"]
    if "interface" in options:
        try:
            address = ipaddress.ip_address(options["interface"])
        except ValueError:
            raise ValueError(f"interface must be an IP address, not {options['interface']!r}") from None
        parts.append(f"interface={endpoints.quoteStringArgument(str(address))}")
    if "backlog" in options:
        if not options["backlog"].isdigit() or int(options["backlog"]) == 0:
            raise ValueError(f"backlog must be a positive number, not {options['backlog']!r}")
        parts.append(f"backlog={options['backlog']}")
    return ":".join(parts)


def parse(description: str) -> Listener:
    """Check one description; ValueError says what is wrong with it."""
    fields = _split(description.strip())
    kind, rest = fields[0].lower(), fields[1:]
    if kind == "tcp":
        return Listener(description, _tcp(_options(rest, ("port",)), _TCP_OPTIONS), tls=False)
    if kind == "ssl":
        options = _options(rest, ("port",))
        files = {name: Path(options.pop(name)).expanduser().absolute() for name in _TLS_FILES if name in options}
        if files and "certKey" not in files:
            raise ValueError("privateKey= and extraCertChain= need certKey= (the certificate file)")
        return Listener(description, _tcp(options, _TCP_OPTIONS), tls=True, files=files)
    if kind == "unix":
        options = _options(rest, ("address",))
        unknown = sorted(set(options) - set(_UNIX_OPTIONS))
        if unknown or not options.get("address"):
            raise ValueError(f"unix: needs a path and takes {', '.join(_UNIX_OPTIONS[1:])}")
        return Listener(description, description, tls=False)
    raise ValueError(f"unknown endpoint type {fields[0]!r} (use ssl:PORT for HTTPS, tcp:PORT for HTTP, or unix:PATH)")
