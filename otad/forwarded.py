"""Who sent a request and which URL it used, when otad runs behind reverse proxies it was told to trust.

Only a connection from ``[server] trusted_proxies`` may speak for someone else. From such a peer,
otad reads one family of headers (``[server] proxy_headers``): ``X-Forwarded-For`` with
``X-Forwarded-Proto`` and ``X-Forwarded-Host``, or RFC 7239's ``Forwarded``. Reading both would
let a client send whichever one its proxy does not overwrite. The client is found by walking the
address list from the right past trusted proxies: the first address that is not one is the
client, because everything left of it was written by the client itself. From any other peer
these headers are ignored. Malformed values from a trusted proxy raise ``ForwardedError``, which
the site answers with 400.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from twisted.web.http_headers import Headers

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# A Host header (or forwarded host): a DNS-ish name or a bracketed IPv6 address, with an optional port.
HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")

# RFC 7239 section 4: forwarded-pair = token "=" ( token / quoted-string ), RFC 9110's token.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PAIR = re.compile(rf'({_TOKEN})=({_TOKEN}|"(?:[^"\\]|\\.)*")')
_QUOTED_PAIR = re.compile(r"\\(.)")
# RFC 7239 section 6: "unknown", an obfuscated identifier, or an address with an optional port.
_OBFUSCATED = re.compile(r"_[A-Za-z0-9._-]+")
_WITH_PORT = re.compile(r"\[(?P<v6>[0-9A-Fa-f:.]+)\](?::(?:[0-9]{1,5}|_[A-Za-z0-9._-]+))?|(?P<v4>[0-9.]+):(?:[0-9]{1,5}|_[A-Za-z0-9._-]+)")

HEADER_FAMILIES = ("x-forwarded", "forwarded")


class ForwardedError(ValueError):
    """A trusted proxy sent a forwarding header otad cannot read; str() is the one-line reason."""


@dataclass(frozen=True)
class Origin:
    """Where a request came from, as far as otad can tell.

    ``client`` is the address to log and throttle; ``secure`` says whether the client used HTTPS
    (to otad, or to the proxy in front of it); ``host`` is the Host the client used when a
    trusted proxy said so (None: the request's own Host header); ``proxy`` is the peer that
    forwarded the request, or None when the client connected directly.
    """

    client: str
    secure: bool
    host: str | None = None
    proxy: str | None = None


def _address(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d; they are trusted (and logged) as IPv4.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _node(text: str, header: str) -> Address | str:
    """An address from a list entry: ``a.b.c.d``, ``a.b.c.d:port``, ``v6``, ``[v6]`` or ``[v6]:port``;
    in ``Forwarded`` also ``unknown`` and obfuscated ``_names``, returned as they are."""
    value = text.strip()
    address = _address(value)
    if address is not None:
        return address
    if header == "Forwarded" and (value.lower() == "unknown" or _OBFUSCATED.fullmatch(value)):
        return value
    match = _WITH_PORT.fullmatch(value)
    if match is not None:
        address = _address(match.group("v6") or match.group("v4"))
        if address is not None and address.version == (6 if match.group("v6") else 4):
            return address
    raise ForwardedError(f"{header} holds {value[:60]!r}, which is not an IP address")


def _forwarded_elements(lines: Sequence[str]) -> list[dict[str, str]]:
    """RFC 7239 elements, one dict per element (names lower-cased, quoted values unquoted), in order."""
    elements: list[dict[str, str]] = []
    for line in lines:
        # Each header line is read on its own: a quoted string never runs into the next line.
        current: dict[str, str] = {}
        position = 0
        while position < len(line):
            character = line[position]
            if character in " \t;":
                position += 1
                continue
            if character == ",":
                if current:
                    elements.append(current)
                current = {}
                position += 1
                continue
            match = _PAIR.match(line, position)
            if match is None:
                raise ForwardedError(f"malformed Forwarded header near {line[position : position + 30]!r}")
            name, value = match.group(1).lower(), match.group(2)
            if value.startswith('"'):
                value = _QUOTED_PAIR.sub(r"\1", value[1:-1])
            if name in current:
                raise ForwardedError(f"a Forwarded element gives {name}= twice")
            current[name] = value
            position = match.end()
            if position < len(line) and line[position] not in " \t;,":
                raise ForwardedError(f"malformed Forwarded header near {line[match.start() : position + 30]!r}")
        if current:
            elements.append(current)
    return elements


def _proto(value: str, header: str) -> bool:
    scheme = value.strip().lower()
    if scheme not in ("http", "https"):
        raise ForwardedError(f"{header} must be http or https, not {value.strip()[:30]!r}")
    return scheme == "https"


def _host(value: str, header: str) -> str:
    host = value.strip()
    if not HOST.match(host):
        raise ForwardedError(f"{header} holds {host[:60]!r}, which is not a host name with an optional port")
    return host


def _single(headers: Headers, name: bytes, shown: str) -> str | None:
    values = headers.getRawHeaders(name)
    if not values:
        return None
    text = ",".join(value.decode("latin-1") for value in values)
    if "," in text:
        raise ForwardedError(f"{shown} must hold one value, not a list")
    return text


class TrustedProxies:
    """``[server] trusted_proxies`` and ``proxy_headers``: which peers may forward, and which headers they set."""

    def __init__(self, networks: Sequence[Network] = (), headers: str = "x-forwarded") -> None:
        if headers not in HEADER_FAMILIES:
            raise ValueError(f"headers must be one of {', '.join(HEADER_FAMILIES)}")
        self.networks = tuple(networks)
        self.headers = headers

    def trusts(self, address: Address | str) -> bool:
        """Whether ``address`` (an IP address or its text) is one of the trusted proxies."""
        if not self.networks:
            return False
        found = _address(address) if isinstance(address, str) else address
        if found is None:
            return False
        if isinstance(found, ipaddress.IPv6Address) and found.ipv4_mapped is not None:
            found = found.ipv4_mapped
        return any(found in network for network in self.networks)

    def origin(self, peer: str, secure: bool, headers: Headers) -> Origin:
        """The request's origin; ``peer`` is the connection's address, ``secure`` whether it is TLS."""
        address = _address(peer)
        if address is None or not self.trusts(address):
            return Origin(peer if address is None else str(address), secure)
        if self.headers == "forwarded":
            return self._from_forwarded(str(address), secure, headers)
        return self._from_x_forwarded(str(address), secure, headers)

    def _walk(self, nodes: Sequence[str], header: str) -> tuple[int, Address | str]:
        """The index and address of the client in a left-to-right list of hops: the rightmost untrusted one
        (or the leftmost, when every hop is trusted). Entries left of it are never read: the client wrote them."""
        for index in range(len(nodes) - 1, -1, -1):
            node = _node(nodes[index], header)
            if isinstance(node, str) or not self.trusts(node):
                return index, node
        return 0, _node(nodes[0], header)

    def _from_x_forwarded(self, proxy: str, secure: bool, headers: Headers) -> Origin:
        client = proxy
        listed = headers.getRawHeaders(b"x-forwarded-for")
        if listed:
            # Several header lines form one list, in order (RFC 9110 5.3).
            nodes = [entry for line in listed for entry in line.decode("latin-1").split(",") if entry.strip()]
            if not nodes:
                raise ForwardedError("X-Forwarded-For is empty")
            client = str(self._walk(nodes, "X-Forwarded-For")[1])
        proto = _single(headers, b"x-forwarded-proto", "X-Forwarded-Proto")
        host = _single(headers, b"x-forwarded-host", "X-Forwarded-Host")
        return Origin(
            client,
            _proto(proto, "X-Forwarded-Proto") if proto is not None else secure,
            _host(host, "X-Forwarded-Host") if host is not None else None,
            proxy,
        )

    def _from_forwarded(self, proxy: str, secure: bool, headers: Headers) -> Origin:
        lines = [line.decode("latin-1") for line in headers.getRawHeaders(b"forwarded", [])]
        elements = _forwarded_elements(lines)
        if not elements:
            return Origin(proxy, secure, None, proxy)
        if any("for" not in element for element in elements):
            raise ForwardedError("a Forwarded element has no for=")
        index, client = self._walk([element["for"] for element in elements], "Forwarded")
        # The client's own element is the one its first proxy wrote: proto and host are what the client used.
        element = elements[index]
        return Origin(
            str(client),
            _proto(element["proto"], "Forwarded proto=") if "proto" in element else secure,
            _host(element["host"], "Forwarded host=") if "host" in element else None,
            proxy,
        )
