"""
Structure-aware fuzzing of the real otad daemon over raw TLS sockets.

Shared by ``bench/fuzz.py`` (the command line, thousands of inputs) and
``tests/test_fuzz.py`` (a small seeded run in the trial suite).  The pieces:

* ``run_fuzz`` starts ``twistd otad`` (``tests.daemon.Daemon``) trusting a fake
  Apple hierarchy, and ``build_seeds`` enrolls a fake device all the way
  through phase 3 to get VALID seed messages: a phase-2 body, a phase-3 body,
  SCEP PKCSReq and GetCertInitial (CertPoll) PKIMessages and a good Basic
  auth header.
* ``Mutator`` turns a seed into one ``Case``: byte-level, ASN.1-aware and
  plist-aware mutations (plists re-signed with the fake device's keys so they
  pass the signature check, SCEP messages re-enveloped and re-signed), HTTP
  framing, headers, query strings and Authorization headers.
* ``RawClient`` sends a case over a raw TLS socket (``ssl`` in threads, so
  anything can be sent, slowly if need be) from its own loopback address
  (127.x.y.z), so that the daemon's JSON log ties every traceback to the
  case that caused it.
* ``Runner`` runs the endpoints one after another with C threads, counts
  outcomes, reads tracebacks from the daemon's output, replays failing
  inputs alone, and ``FuzzReport`` prints the table and one minimal
  reproducer per distinct failure.

Like the fake device, this module never imports ``otad``: it judges the
daemon from the outside.  (``otad-admin`` is run as a program once, to create
a static SCEP challenge.)
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import json
import math
import os
import plistlib
import random
import re
import select
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_from_bytes
from xml.sax.saxutils import escape as xml_escape

import bcrypt
from asn1crypto import core as asn1_core
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue

from tests.daemon import ROOT, Daemon
from tests.fakeapple import FakeAppleHierarchy, self_signed_identity
from tests.fakedevice import FakeDevice, build_csr, envelope, select_scep_certs, sign_cms, to_ber_indefinite

__all__ = [
    "ENDPOINTS",
    "Case",
    "EndpointResult",
    "Finding",
    "FuzzOptions",
    "FuzzReport",
    "Mutator",
    "Outcome",
    "RawClient",
    "Runner",
    "Seeds",
    "build_seeds",
    "parse_asn1",
    "parse_tracebacks",
    "run_fuzz",
]

ENDPOINTS = ("/", "/CA", "/enroll", "/profile phase 2", "/profile phase 3", "/scep GET", "/scep POST")

PKCS7_SIGNATURE = b"application/pkcs7-signature"
PKI_MESSAGE = b"application/x-pki-message"
# otad's [server] max_body default: bodies above it must get 413.
MAX_BODY = 65536

OID_SCEP_MESSAGE_TYPE = "2.16.840.1.113733.1.9.2"
OID_SCEP_SENDER_NONCE = "2.16.840.1.113733.1.9.5"
OID_SCEP_TRANSACTION_ID = "2.16.840.1.113733.1.9.7"
OID_CHALLENGE_PASSWORD = "1.2.840.113549.1.9.7"
OID_EXTENSION_REQUEST = "1.2.840.113549.1.9.14"
SHA256_WITH_RSA = bytes.fromhex("300d06092a864886f70d01010b0500")

PHASE2_UDID = "00008030-00F0220000000001"
PHASE3_UDID = "00008030-00F0330000000001"
# A second device through SCEP: it takes the phase-3 inputs that leave state behind (otad merges every attribute a
# device sends into its stored record), so that they cannot slow down or break the other phase-3 inputs.
SINK_UDID = "00008030-00F0330000000002"


# ======================================================================== DER / BER


def der_length(length: int) -> bytes:
    """DER definite length octets."""
    if length < 0x80:
        return bytes([length])
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def tlv(tag: int, contents: bytes) -> bytes:
    """One DER TLV with a single-octet tag."""
    return bytes([tag]) + der_length(len(contents)) + contents


def der_oid(dotted: str) -> bytes:
    return bytes(asn1_core.ObjectIdentifier(dotted).dump())


def der_integer(value: int) -> bytes:
    return bytes(asn1_core.Integer(value).dump())


@dataclass
class Node:
    """One BER/DER element. ``children`` is set for constructed elements and for OCTET STRINGs that wrap DER."""

    tag: bytes
    value: bytes = b""
    children: list[Node] | None = None
    indefinite: bool = False
    length_override: bytes | None = None
    raw: bytes | None = None

    @property
    def constructed(self) -> bool:
        return bool(self.tag) and bool(self.tag[0] & 0x20)

    def encode(self) -> bytes:
        if self.raw is not None:
            return self.raw
        contents = b"".join(child.encode() for child in self.children) if self.children is not None else self.value
        if self.length_override is not None:
            return self.tag + self.length_override + contents
        if self.indefinite:
            return self.tag + b"\x80" + contents + b"\x00\x00"
        return self.tag + der_length(len(contents)) + contents


def _parse_one(data: bytes, position: int, depth: int) -> tuple[Node, int]:
    if depth > 48:
        raise ValueError("too deep")
    if position >= len(data):
        raise ValueError("truncated")
    start = position
    position += 1
    if data[start] & 0x1F == 0x1F:
        while position < len(data) and data[position] & 0x80:
            position += 1
        position += 1
    tag = data[start:position]
    if position >= len(data):
        raise ValueError("no length")
    first = data[position]
    position += 1
    constructed = bool(tag[0] & 0x20)
    if first == 0x80:
        if not constructed:
            raise ValueError("indefinite primitive")
        children = []
        while data[position : position + 2] != b"\x00\x00":
            child, position = _parse_one(data, position, depth + 1)
            children.append(child)
        return Node(tag, children=children, indefinite=True), position + 2
    if first & 0x80:
        count = first & 0x7F
        if count > 4 or position + count > len(data):
            raise ValueError("bad length")
        length = int.from_bytes(data[position : position + count], "big")
        position += count
    else:
        length = first
    end = position + length
    if end > len(data):
        raise ValueError("overrun")
    contents = data[position:end]
    if constructed:
        return Node(tag, children=_parse_all(contents, depth + 1)), end
    node = Node(tag, value=contents)
    if tag == b"\x04" and contents[:1] in (b"\x30", b"\x31") and depth < 40:
        # An OCTET STRING that wraps DER (SCEP's pkcsPKIEnvelope): mutate inside it too.
        try:
            node.children = _parse_all(contents, depth + 1)
        except ValueError:
            pass
    return node, end


def _parse_all(data: bytes, depth: int = 0) -> list[Node]:
    nodes = []
    position = 0
    while position < len(data):
        node, position = _parse_one(data, position, depth)
        nodes.append(node)
    return nodes


def parse_asn1(data: bytes) -> list[Node]:
    """Every top-level element of ``data`` (BER or DER); ValueError when it is not well formed."""
    return _parse_all(data)


def _walk(nodes: list[Node]) -> list[tuple[list[Node], int]]:
    """(parent list, index) for every element, depth first, iteratively."""
    found: list[tuple[list[Node], int]] = []
    stack = [nodes]
    while stack:
        siblings = stack.pop()
        for index, node in enumerate(siblings):
            found.append((siblings, index))
            if node.children is not None:
                stack.append(node.children)
    return found


ASN1_TAGS = (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0C, 0x13, 0x16, 0x17, 0x18, 0x1E, 0x30, 0x31, 0xA0, 0xA1, 0xA3, 0x24, 0x80, 0x00, 0xFF)
BAD_LENGTHS = (
    b"\x00",
    b"\x7f",
    b"\x80",
    b"\x81\xff",
    b"\x82\xff\xff",
    b"\x84\x7f\xff\xff\xff",
    b"\x84\xff\xff\xff\xff",
    b"\x85\x01\x00\x00\x00\x00",
    b"\x89\x01\x00\x00\x00\x00\x00\x00\x00\x00",
    b"\xff",
    b"\x81\x01",
    b"\x82\x00\x01",
)


def mutate_asn1(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    """One structure-aware mutation of a BER/DER blob: a length, a tag, a duplicated, removed or deeply nested element, ..."""
    try:
        tree = parse_asn1(data)
    except (ValueError, IndexError):
        return "not ASN.1: flipped a byte", flip_bytes(rng, data, 1)
    spots = _walk(tree)
    siblings, index = rng.choice(spots[1:] if len(spots) > 1 else spots)
    node = siblings[index]
    where = f"element #{spots.index((siblings, index))} (tag {node.tag.hex()})"
    operation = rng.choice(
        ("length", "length", "tag", "duplicate", "delete", "nest", "integer", "oid", "string", "truncate", "ber", "swap", "empty")
    )
    if operation == "length":
        if rng.random() < 0.5:
            real = len(node.encode()) - len(node.tag) - len(der_length(len(node.encode())))
            new = der_length(max(0, real + rng.choice((-2, -1, 1, 2, 100, 70000))))
        else:
            new = rng.choice(BAD_LENGTHS)
        node.length_override = new
        node.indefinite = False
        description = f"length of {where} set to {new.hex()}"
    elif operation == "tag":
        new_tag = (
            bytes([rng.choice(ASN1_TAGS)])
            if rng.random() < 0.85
            else rng.choice((b"\x1f\x81\x80\x01", b"\x3f\xff\xff\xff\xff\x7f", b"\x1f"))
        )
        description = f"tag of {where} swapped to {new_tag.hex()}"
        node.tag = new_tag
    elif operation == "duplicate":
        copies = rng.choice((1, 1, 2, 10, 200))
        encoded = node.encode()
        copies = max(1, min(copies, 60000 // max(1, len(encoded))))
        for _ in range(copies):
            siblings.insert(index, Node(b"", raw=encoded))
        description = f"{where} duplicated {copies} time(s)"
    elif operation == "delete":
        del siblings[index]
        description = f"{where} removed"
    elif operation == "nest":
        depth = rng.choice((64, 500, 2000, 5000, 12000))
        wrapper = bytes([rng.choice((0x30, 0x31, 0xA0, 0x24))])
        inner = node.encode()
        if rng.random() < 0.6:
            raw = wrapper + b"\x80"
            raw = raw * depth + inner + b"\x00\x00" * depth
            style = "indefinite"
        else:
            depth = min(depth, 2000)
            raw = inner
            for _ in range(depth):
                raw = wrapper + der_length(len(raw)) + raw
            style = "definite"
        siblings[index] = Node(b"", raw=raw)
        description = f"{where} nested {depth} levels deep in {wrapper.hex()} ({style} lengths)"
    elif operation == "integer":
        value = rng.choice((b"", b"\x00", b"\xff", b"\x00\x00\x01", b"\x80" + b"\x00" * 8, b"\x7f" * 2000, os.urandom(600)))
        siblings[index] = Node(b"\x02", value=value)
        description = f"{where} replaced by INTEGER {value[:8].hex()}... ({len(value)} bytes)"
    elif operation == "oid":
        value = rng.choice((b"", b"\x80", b"\x2a\x80\x80\x80", b"\xff" * 30 + b"\x01", b"\x2a\x86\x48\x86\xf7\x0d\x01\x07", os.urandom(12)))
        siblings[index] = Node(b"\x06", value=value)
        description = f"{where} replaced by OID {value.hex()}"
    elif operation == "string":
        value = rng.choice((b"\xff\xfe\xfd", b"\xc3\x28", b"\x00" * 5, b"\xed\xa0\x80", "\u2603".encode() * 3, b"A" * 5000))
        new_tag = bytes([rng.choice((0x0C, 0x13, 0x16, 0x1E, 0x14))])
        siblings[index] = Node(new_tag, value=value)
        description = f"{where} replaced by string tag {new_tag.hex()} value {value[:12]!r}"
    elif operation == "truncate":
        encoded = node.encode()
        keep = rng.randrange(0, max(1, len(encoded)))
        siblings[index] = Node(b"", raw=encoded[:keep])
        description = f"{where} truncated to {keep} of {len(encoded)} bytes"
    elif operation == "ber":
        if node.children is not None:
            node.indefinite = not node.indefinite
            description = f"{where} switched to {'indefinite' if node.indefinite else 'definite'} length"
        else:
            node.length_override = b"\x80"
            node.value += b"\x00\x00"
            description = f"primitive {where} given an indefinite length"
    elif operation == "swap" and len(siblings) > 1:
        other = rng.randrange(len(siblings))
        siblings[index], siblings[other] = siblings[other], siblings[index]
        description = f"{where} swapped with sibling #{other}"
    else:
        node.children = [] if node.children is not None else None
        node.value = b""
        node.raw = None
        description = f"{where} emptied"
    return f"ASN.1 {operation}: {description}", b"".join(element.encode() for element in tree)


# ======================================================================== raw bytes

INTERESTING_BYTES = (b"\x00", b"\xff", b"\x7f", b"\x80", b"\x30\x80", b"\x00\x00", b"\x0b", b"\x1c", b"%", b"\r\n", b"<", b"]]>")


def flip_bytes(rng: random.Random, data: bytes, count: int) -> bytes:
    if not data:
        return bytes([rng.randrange(256)])
    buffer = bytearray(data)
    for _ in range(count):
        position = rng.randrange(len(buffer))
        buffer[position] ^= 1 << rng.randrange(8)
    return bytes(buffer)


def mutate_bytes(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    """A structure-blind mutation: flip, truncate, extend, insert, delete, duplicate or overwrite bytes."""
    operation = rng.choice(("flip", "flip", "truncate", "extend", "insert", "delete", "duplicate", "overwrite"))
    size = len(data)
    if operation == "flip":
        count = rng.choice((1, 1, 2, 4, 16, 64))
        return f"flipped {count} random bit(s)", flip_bytes(rng, data, count)
    if operation == "truncate":
        keep = rng.choice((0, 1, 2, rng.randrange(max(1, size)), size - 1, size // 2))
        keep = max(0, min(keep, size))
        return f"truncated to {keep} of {size} bytes", data[:keep]
    if operation == "extend":
        extra = rng.choice((1, 2, 16, 1000, 30000, 70000))
        filler = rng.choice((os.urandom(extra), b"\x00" * extra, b"A" * extra, b"\x30\x80" * (extra // 2)))
        return f"extended by {len(filler)} bytes", data + filler
    position = rng.randrange(max(1, size))
    if operation == "insert":
        inserted = rng.choice((os.urandom(rng.choice((1, 4, 64, 1024))), rng.choice(INTERESTING_BYTES)))
        return f"inserted {len(inserted)} bytes at offset {position}", data[:position] + inserted + data[position:]
    if operation == "delete":
        length = rng.choice((1, 2, 8, 128, 1024))
        return f"deleted {length} bytes at offset {position}", data[:position] + data[position + length :]
    if operation == "duplicate":
        length = rng.choice((1, 16, 256, 4096))
        piece = data[position : position + length]
        return f"duplicated {len(piece)} bytes at offset {position}", data[:position] + piece + data[position:]
    value = rng.choice(INTERESTING_BYTES)
    return f"overwrote offset {position} with {value!r}", data[:position] + value + data[position + len(value) :]


# ======================================================================== plists


def xml_plist(body: str, *, declaration: str = '<?xml version="1.0" encoding="UTF-8"?>\n') -> bytes:
    return (
        declaration + '<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n'
        f'<plist version="1.0">\n{body}\n</plist>\n'
    ).encode("utf-8", "surrogatepass")


def xml_dict(attributes: dict[str, Any], extra: str = "") -> str:
    """A <dict> of ``attributes`` (serialized by plistlib) with raw XML ``extra`` appended inside it."""
    serialized = plistlib.dumps(attributes, fmt=plistlib.FMT_XML).decode("utf-8")
    inner = serialized.split('<plist version="1.0">', 1)[1].rsplit("</plist>", 1)[0].strip()
    if inner == "<dict/>":
        inner = "<dict>\n</dict>"
    head, _, _ = inner.rpartition("</dict>")
    return f"{head}{extra}</dict>"


class BinaryPlist:
    """A hand-made bplist00 writer, so that objects may reference themselves (plistlib's writer cannot)."""

    def __init__(self) -> None:
        self.objects: list[bytes] = []

    def reserve(self) -> int:
        self.objects.append(b"")
        return len(self.objects) - 1

    def put(self, data: bytes, at: int | None = None) -> int:
        if at is None:
            self.objects.append(data)
            return len(self.objects) - 1
        self.objects[at] = data
        return at

    @staticmethod
    def _marker(kind: int, count: int) -> bytes:
        if count < 15:
            return bytes([kind << 4 | count])
        return bytes([kind << 4 | 0xF]) + BinaryPlist._int(count)

    @staticmethod
    def _int(value: int) -> bytes:
        if 0 <= value < 1 << 8:
            return b"\x10" + value.to_bytes(1, "big")
        if 0 <= value < 1 << 16:
            return b"\x11" + value.to_bytes(2, "big")
        if 0 <= value < 1 << 32:
            return b"\x12" + value.to_bytes(4, "big")
        return b"\x13" + value.to_bytes(8, "big", signed=True)

    def integer(self, value: int) -> int:
        return self.put(self._int(value))

    def ascii(self, data: bytes) -> int:
        return self.put(self._marker(0x5, len(data)) + data)

    def text(self, value: str) -> int:
        if value.isascii():
            return self.ascii(value.encode("ascii"))
        encoded = value.encode("utf-16-be", "surrogatepass")
        return self.put(self._marker(0x6, len(encoded) // 2) + encoded)

    def data(self, value: bytes) -> int:
        return self.put(self._marker(0x4, len(value)) + value)

    def array(self, refs: Sequence[int], at: int | None = None) -> int:
        return self.put(self._marker(0xA, len(refs)) + b"".join(ref.to_bytes(2, "big") for ref in refs), at)

    def dictionary(self, pairs: Sequence[tuple[int, int]], at: int | None = None) -> int:
        keys = b"".join(key.to_bytes(2, "big") for key, _ in pairs)
        values = b"".join(value.to_bytes(2, "big") for _, value in pairs)
        return self.put(self._marker(0xD, len(pairs)) + keys + values, at)

    def strings_dict(self, attributes: dict[str, str], extra: Sequence[tuple[str, int]] = (), at: int | None = None) -> int:
        pairs = [(self.text(key), self.text(value)) for key, value in attributes.items()]
        pairs += [(self.text(key), ref) for key, ref in extra]
        return self.dictionary(pairs, at)

    def build(self, top: int = 0) -> bytes:
        if len(self.objects) > 0xFFFF:
            raise ValueError("too many objects for 2-byte references")
        out = bytearray(b"bplist00")
        offsets = []
        for data in self.objects:
            offsets.append(len(out))
            out += data
        table = len(out)
        for offset in offsets:
            out += offset.to_bytes(4, "big")
        out += b"\x00" * 6 + bytes([4, 2]) + struct.pack(">QQQ", len(self.objects), top, table)
        return bytes(out)


def _string_attributes(attributes: dict[str, Any]) -> dict[str, str]:
    return {key: value for key, value in attributes.items() if isinstance(value, str)}


# The plists below are shared by the Mutator and by the named regression tests of what it once found (tests/test_profile.py).


def malformed_date_plist(attributes: dict[str, Any], key: str, bad: str) -> bytes:
    """An XML plist of ``attributes`` in which ``key`` is ``<date>bad</date>`` (plistlib's reader raises AttributeError
    for a date its pattern does not match, ValueError for an impossible one)."""
    others = {name: value for name, value in attributes.items() if name != key}
    return xml_plist(xml_dict(others, f"<key>{key}</key><date>{bad}</date>"))


NESTINGS = ("XML array", "XML dict", "binary array", "binary dict")


def nested_plist(attributes: dict[str, Any], key: str, kind: str, depth: int) -> bytes:
    """A plist of ``attributes`` in which ``key`` is the string "x" wrapped ``depth`` times in one of ``NESTINGS`` (an
    XML plist, whose nesting costs 15 bytes a level for arrays; or a binary one, for which only string attributes are kept)."""
    others = {name: value for name, value in attributes.items() if name != key}
    if kind == "XML array":
        return xml_plist(xml_dict(others, f"<key>{key}</key>" + "<array>" * depth + "<string>x</string>" + "</array>" * depth))
    if kind == "XML dict":
        return xml_plist(xml_dict(others, f"<key>{key}</key>" + "<dict><key>k</key>" * depth + "<string>x</string>" + "</dict>" * depth))
    plist = BinaryPlist()
    top = plist.reserve()
    ref = plist.text("x")
    for _ in range(depth):
        ref = plist.array([ref]) if kind == "binary array" else plist.dictionary([(plist.text("k"), ref)])
    plist.strings_dict(_string_attributes(others), [(key, ref)], at=top)
    return plist.build(top)


SELF_REFERENCES = (
    "an array that contains itself",
    "a dict that contains itself",
    "two arrays that contain each other",
    "the top dict contains itself",
)


def self_referencing_plist(attributes: dict[str, Any], key: str, variant: str) -> bytes:
    """A binary plist of the string ``attributes`` in which ``key`` is one of the cycles of ``SELF_REFERENCES``
    (plistlib's writer cannot make one; its reader returns objects that contain themselves)."""
    plist = BinaryPlist()
    top = plist.reserve()
    if variant == "an array that contains itself":
        ref = plist.reserve()
        plist.array([plist.text("x"), ref], at=ref)
    elif variant == "a dict that contains itself":
        ref = plist.reserve()
        plist.dictionary([(plist.text("self"), ref)], at=ref)
    elif variant == "two arrays that contain each other":
        ref, other = plist.reserve(), plist.reserve()
        plist.array([other], at=ref)
        plist.array([ref], at=other)
    else:
        ref = top
    others = {name: value for name, value in _string_attributes(attributes).items() if name != key}
    plist.strings_dict(others, [(key, ref)], at=top)
    return plist.build(top)


def sign_as_device(
    content: bytes,
    identity: tuple[x509.Certificate, rsa.RSAPrivateKey],
    chain: Sequence[x509.Certificate] | None = None,
    *,
    ber: bool = False,
) -> bytes:
    """``content`` signed as a device signs its attributes. Phase 2 (``chain``: the Apple CA certificates above the
    identity): by its Apple identity, SHA-1, no signed attributes, the whole chain embedded, BER when ``ber``. Phase 3
    (no ``chain``): by the identity otad issued, SHA-256, signed attributes, that certificate alone."""
    cert, key = identity
    if chain is None:
        return sign_cms(content, cert, key, digest="sha256", signed_attributes=(), certificates=[cert])
    der = sign_cms(content, cert, key, digest="sha1", signed_attributes=None, certificates=[cert, *chain])
    return to_ber_indefinite(der) if ber else der


# ======================================================================== HTTP


@dataclass
class HTTPRequest:
    """A request before framing: ``encode`` adds Content-Length unless the headers already decide the length."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    version: bytes = b"HTTP/1.1"

    def copy(self, **changes: Any) -> HTTPRequest:
        copied = dataclasses.replace(self, **changes)
        if "headers" not in changes:
            copied.headers = list(self.headers)
        return copied

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def set(self, name: bytes, value: bytes) -> HTTPRequest:
        """Replace (or add) a header in place; returns self."""
        self.drop(name)
        self.headers.append((name, value))
        return self

    def drop(self, name: bytes) -> HTTPRequest:
        self.headers = [(key, value) for key, value in self.headers if key.lower() != name.lower()]
        return self

    def lines(self, auto_length: bool = True) -> list[bytes]:
        lines = [self.method + b" " + self.target + (b" " + self.version if self.version else b"")]
        lines += [name + b": " + value for name, value in self.headers]
        framed = self.header(b"content-length") is not None or self.header(b"transfer-encoding") is not None
        if auto_length and not framed and (self.body or self.method in (b"POST", b"PUT")):
            lines.append(b"Content-Length: " + str(len(self.body)).encode())
        return lines

    def encode(self, eol: bytes = b"\r\n", auto_length: bool = True) -> bytes:
        return eol.join(self.lines(auto_length)) + eol + eol + self.body


@dataclass
class Case:
    """One input: what is sent (chunks of bytes, each after a pause) and how it was made."""

    endpoint: str
    mutator: str
    description: str
    chunks: list[tuple[float, bytes]]
    # normal: send, then wait --timeout for an answer; slow: a trickle that the server should cut short;
    # abort: send and hang up at once (only tracebacks count).
    mode: str = "normal"
    index: int = -1
    source: str = ""
    # For re-signed mutations: the signed content (the plist, or the SCEP message's enveloped payload) before signing.
    content: bytes | None = None

    @property
    def data(self) -> bytes:
        return b"".join(data for _, data in self.chunks)

    @property
    def size(self) -> int:
        return sum(len(data) for _, data in self.chunks)


@dataclass
class Outcome:
    """What the daemon did with one case."""

    # response | closed (EOF/reset without a final response) | timeout (none within --timeout)
    # | held (a slow sender still connected, unanswered, after --slow-seconds) | cut off (a slow sender the server
    # hung up on: the right defence, so not a failure) | aborted (we hung up) | error (connect/TLS)
    kind: str
    status: int | None = None
    interim: tuple[int, ...] = ()
    head: bytes = b""
    started: float = 0.0
    finished: float = 0.0
    note: str = ""

    @property
    def failure(self) -> str | None:
        """``5xx``, ``closed`` or ``unanswered`` when this outcome is a failure, else None."""
        if self.kind == "response" and self.status is not None and self.status >= 500:
            return "5xx"
        if self.kind in ("closed", "error"):
            return "closed"
        if self.kind in ("timeout", "held", "late"):
            return "unanswered"
        return None

    @property
    def reason(self) -> str:
        """The first line of the response body (a refusal's reason), chunked or not."""
        head, _, body = self.head.partition(b"\r\n\r\n")
        if re.search(rb"(?im)^transfer-encoding:\s*chunked", head):
            body = body.partition(b"\r\n")[2]
        return body.split(b"\n", 1)[0][:120].decode("utf-8", "replace").strip()

    def summary(self) -> str:
        interim = f" after interim {', '.join(map(str, self.interim))}" if self.interim else ""
        if self.kind == "response":
            return f"HTTP {self.status}{interim} in {self.finished - self.started:.2f} s"
        if self.kind == "timeout":
            return f"no response within the timeout{interim}"
        if self.kind == "late":
            return f"HTTP {self.status}{interim}, but only after {self.finished - self.started:.1f} s"
        if self.kind == "held":
            return f"still connected and unanswered after {self.finished - self.started:.0f} s of trickling{interim}"
        if self.kind == "closed":
            return f"connection closed without a response{interim}{': ' + self.note if self.note else ''}"
        return f"{self.kind}{': ' + self.note if self.note else ''}"


class _ResponseReader:
    """Finds the final status line (skipping 1xx) in what the server sends."""

    def __init__(self) -> None:
        self.buffer = b""
        self.interim: list[int] = []
        self.status: int | None = None
        self.head = b""
        self.eof = False
        self.garbage = False
        self.eof_note = ""
        self._body_wanted = 0

    @property
    def done(self) -> bool:
        return self.eof or self.garbage or self.status is not None

    @property
    def wants_body(self) -> bool:
        return self.status is not None and self._body_wanted > 0 and not self.eof

    @property
    def answered(self) -> bool:
        return self.status is not None or self.garbage

    def feed(self, data: bytes) -> None:
        if self.status is not None:
            self.head += data[: max(0, 600 - len(self.head))]
            self._body_wanted -= len(data)
            return
        self.buffer += data
        while self.status is None:
            if len(self.buffer) >= 5 and not self.buffer.startswith(b"HTTP/"):
                self.garbage = True
                self.head = self.buffer[:600]
                return
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            block, self.buffer = self.buffer[: end + 4], self.buffer[end + 4 :]
            match = re.match(rb"HTTP/\d\.\d (\d{3})", block)
            if match is None:
                self.garbage = True
                self.head = block[:600]
                return
            code = int(match.group(1))
            if 100 <= code < 200:
                self.interim.append(code)
                continue
            self.status = code
            self.head = (block + self.buffer)[:600]
            length = re.search(rb"(?im)^content-length:\s*(\d+)", block)
            wanted = min(int(length.group(1)), 300) if length else 0
            self._body_wanted = wanted - len(self.buffer)


class RawClient:
    """Sends cases over raw TLS sockets from distinct loopback addresses; thread-safe."""

    def __init__(self, port: int, ca_file: Path, timeout: float, slow_seconds: float) -> None:
        self.port = port
        self.timeout = timeout
        self.slow_seconds = slow_seconds
        self.context = ssl.create_default_context(cafile=str(ca_file))
        self._next = 0
        self._lock = threading.Lock()

    def next_source(self) -> str:
        """A fresh 127.A.B.C for each connection: the daemon logs it, which ties its tracebacks to the case."""
        with self._lock:
            self._next += 1
            number = self._next
        return f"127.{1 + number // (254 * 256) % 254}.{number // 254 % 256}.{1 + number % 254}"

    def send(self, case: Case, patience: float | None = None) -> Outcome:
        """Send ``case`` and classify what happens; ``patience`` waits longer than the timeout (the answer then counts as late)."""
        case.source = self.next_source()
        started = time.monotonic()
        reader = _ResponseReader()
        try:
            raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            raw.bind((case.source, 0))
            raw.settimeout(max(self.timeout, 5.0))
            raw.connect(("127.0.0.1", self.port))
            tls = self.context.wrap_socket(raw, server_hostname="localhost")
        except (OSError, ssl.SSLError) as error:
            return Outcome("error", started=started, finished=time.monotonic(), note=f"connect/TLS handshake failed: {error!r}")
        with tls:
            sending_failed = ""
            for pause, data in case.chunks:
                if pause and self._read(tls, reader, pause):
                    break
                sending_failed = self._send(tls, reader, data)
                if sending_failed or reader.done:
                    break
            if case.mode == "abort" and not reader.done:
                return Outcome("aborted", started=started, finished=time.monotonic())
            sent = time.monotonic()
            if not reader.done:
                self._read(tls, reader, 0.5 if case.mode == "slow" else max(self.timeout, patience or 0))
            finished = time.monotonic()
            if reader.status is not None and reader.wants_body:
                # A little of the body (a 5xx's reason) if it comes at once; HEAD and 204 answers have none.
                self._read_body(tls, reader, 0.2)
        if reader.status is not None:
            kind = "late" if finished - sent > self.timeout else "response"
            return Outcome(kind, reader.status, tuple(reader.interim), reader.head, started, finished)
        if reader.garbage:
            return Outcome("closed", None, tuple(reader.interim), reader.head, started, finished, note="the answer is not HTTP")
        if case.mode == "slow" and (reader.eof or sending_failed):
            return Outcome(
                "cut off", None, tuple(reader.interim), reader.buffer[:600], started, finished, note=reader.eof_note or sending_failed
            )
        if reader.eof:
            note = reader.eof_note or sending_failed
            return Outcome("closed", None, tuple(reader.interim), reader.buffer[:600], started, finished, note=note)
        kind = "held" if case.mode == "slow" else "timeout"
        return Outcome(kind, None, tuple(reader.interim), reader.buffer[:600], started, finished, note=sending_failed)

    def _send(self, tls: ssl.SSLSocket, reader: _ResponseReader, data: bytes) -> str:
        """Send in 16 KiB pieces, reading whatever the server says in between; '' or why sending failed."""
        for offset in range(0, len(data), 16384):
            if self._readable(tls):
                self._read(tls, reader, 0.01)
                if reader.done:
                    return ""
            try:
                tls.settimeout(self.timeout)
                tls.sendall(data[offset : offset + 16384])
            except (OSError, ssl.SSLError) as error:
                self._read(tls, reader, min(self.timeout, 1.0))
                return f"sending failed: {error.__class__.__name__}"
        return ""

    @staticmethod
    def _read_body(tls: ssl.SSLSocket, reader: _ResponseReader, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while reader.wants_body and (remaining := deadline - time.monotonic()) > 0:
            try:
                tls.settimeout(remaining)
                data = tls.recv(65536)
            except (OSError, ssl.SSLError):
                return
            if not data:
                return
            reader.feed(data)

    @staticmethod
    def _readable(tls: ssl.SSLSocket) -> bool:
        if tls.pending():
            return True
        readable, _, _ = select.select([tls], [], [], 0)
        return bool(readable)

    @staticmethod
    def _read(tls: ssl.SSLSocket, reader: _ResponseReader, seconds: float) -> bool:
        """Read for up to ``seconds`` or until the answer is complete; True when done (answered or closed)."""
        deadline = time.monotonic() + seconds
        while not reader.done:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                tls.settimeout(remaining)
                data = tls.recv(65536)
            except TimeoutError:
                return False
            except (ssl.SSLError, OSError) as error:
                reader.eof = True
                reader.eof_note = error.__class__.__name__
                return True
            if not data:
                reader.eof = True
                return True
            reader.feed(data)
        return True


# ======================================================================== seeds


@dataclass
class Seeds:
    """Valid messages (checked against the daemon) and the keys to re-sign mutations of them."""

    port: int
    ca_file: Path
    apple: FakeAppleHierarchy
    user: str
    password: str
    auth_header: bytes
    # phase 2: a device with an Apple identity; phase 3: one that went all the way through SCEP
    apple_identity: tuple[x509.Certificate, rsa.RSAPrivateKey]
    attributes2: dict[str, Any]
    phase2_body: bytes
    fresh_challenges: list[str]
    used_challenge: str
    identity3: tuple[x509.Certificate, rsa.RSAPrivateKey]
    attributes3: dict[str, Any]
    sink_identity: tuple[x509.Certificate, rsa.RSAPrivateKey]
    sink_attributes: dict[str, Any]
    phase3_body: bytes
    # SCEP
    ca_cert: x509.Certificate
    ra_cert: x509.Certificate
    scep_key: rsa.RSAPrivateKey
    scep_signer: x509.Certificate
    static_challenge: str
    pkcs_req: bytes
    cert_poll: bytes
    issued_transaction: str
    issued_serial: int
    issued_subject: x509.Name
    small_key: rsa.RSAPrivateKey
    ec_key: ec.EllipticCurvePrivateKey
    stranger: tuple[x509.Certificate, rsa.RSAPrivateKey]
    checks: dict[str, str] = field(default_factory=dict)

    @property
    def host(self) -> bytes:
        return f"localhost:{self.port}".encode()


def write_users_file(path: Path, user: str, password: str) -> None:
    """An htpasswd file holding ``user`` with a cheap (cost 4) bcrypt hash, so that /enroll fuzzing is not bcrypt-bound.

    ``apple`` is there too with otad's own cost (12) and a random password, for wrong-password cases.
    """
    cheap = b"$2y$" + bcrypt.hashpw(password.encode(), bcrypt.gensalt(4))[4:]
    dear = b"$2y$" + bcrypt.hashpw(os.urandom(12).hex().encode(), bcrypt.gensalt(12))[4:]
    path.write_bytes(user.encode() + b":" + cheap + b"\napple:" + dear + b"\n")
    path.chmod(0o600)


def scep_message(
    content: bytes,
    signer: tuple[x509.Certificate, Any],
    *,
    message_type: str = "19",
    transaction_id: str | None = None,
    sender_nonce: bytes | None = None,
    attributes: Sequence[tuple[str, bytes]] | None = None,
    digest: str = "sha256",
    certificates: Sequence[x509.Certificate] | None = None,
) -> bytes:
    """A SCEP PKIMessage: ``content`` (usually an EnvelopedData) signed with the SCEP attributes, or with ``attributes`` as given."""
    cert, key = signer
    if attributes is None:
        if transaction_id is None:
            transaction_id = hashlib.sha256(os.urandom(16)).hexdigest().upper()
        attributes = [
            (OID_SCEP_MESSAGE_TYPE, bytes(asn1_core.PrintableString(message_type).dump())),
            (OID_SCEP_TRANSACTION_ID, bytes(asn1_core.PrintableString(transaction_id).dump())),
            (OID_SCEP_SENDER_NONCE, bytes(asn1_core.OctetString(sender_nonce if sender_nonce is not None else os.urandom(16)).dump())),
        ]
    return sign_cms(content, cert, key, digest=digest, signed_attributes=attributes, certificates=certificates)


def issuer_and_subject(issuer: x509.Name, subject: x509.Name) -> bytes:
    return tlv(0x30, issuer.public_bytes() + subject.public_bytes())


def issuer_and_serial(issuer: x509.Name, serial: int) -> bytes:
    return tlv(0x30, issuer.public_bytes() + der_integer(serial))


async def _admin(daemon: Daemon, *args: str) -> str:
    """Run ``otad-admin`` on the daemon's data directory (it is safe to run next to the daemon)."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out, err, code = await getProcessOutputAndValue(
        sys.executable,
        ["-c", "import sys; from otad.admin import main; sys.exit(main())", *args, "--data-dir", str(daemon.data_dir)],
        env=environment,
        path=str(daemon.data_dir),
    )
    if code != 0:
        raise RuntimeError(f"otad-admin {' '.join(args)} failed: {err.decode(errors='replace')}")
    return out.decode().strip()


async def build_seeds(reactor: Any, daemon: Daemon, apple: FakeAppleHierarchy, user: str, password: str, fresh: int) -> Seeds:
    """Enroll fake devices through the daemon to get valid seeds; every seed is checked to be accepted as it is."""
    ca_pem = (daemon.data_dir / "certs" / "ca.pem").read_bytes()
    checks: dict[str, str] = {}
    enrolled = FakeDevice(reactor, daemon.url("/"), ca_pem, apple, PHASE3_UDID)
    newcomer = FakeDevice(reactor, daemon.url("/"), ca_pem, apple, PHASE2_UDID)
    sink = FakeDevice(reactor, daemon.url("/"), ca_pem, apple, SINK_UDID)
    try:
        sink_profile = await sink.phase2((await sink.enroll(user, password))["PayloadContent"]["Challenge"])
        await sink.scep_enroll(sink_profile["PayloadContent"][0])
        await sink.phase3()
        assert sink.scep_identity is not None
        service = await enrolled.enroll(user, password)
        checks["GET /enroll with the Basic auth seed"] = "200, Profile Service"
        used_challenge = service["PayloadContent"]["Challenge"]
        profile = await enrolled.phase2(used_challenge)
        checks["phase 2 body"] = "200, Configuration with a SCEP payload"
        await enrolled.scep_enroll(profile["PayloadContent"][0])
        assert enrolled.scep_identity is not None
        _, payloads = await enrolled.phase3()
        checks["phase 3 body"] = f"200, encrypted Configuration with {len(payloads)} payloads"
        phase3_body = enrolled.phase3_body()

        challenges = []
        for _ in range(fresh + 1):
            challenges.append((await newcomer.enroll(user, password))["PayloadContent"]["Challenge"])
        phase2_body = newcomer.phase2_body(challenges.pop())

        response = await enrolled.request(b"GET", "/scep?operation=GetCACert")
        ra_cert, ca_certs = select_scep_certs(response.content_type, response.body)
        ca_cert = next(cert for cert in ca_certs if cert.subject == cert.issuer)
        static_challenge = await _admin(daemon, "challenge", "create", "--uses", "100000", "--ttl", "1d")

        def keys() -> tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, tuple[x509.Certificate, rsa.RSAPrivateKey]]:
            return (
                rsa.generate_private_key(65537, 2048),
                rsa.generate_private_key(65537, 1024),
                ec.generate_private_key(ec.SECP256R1()),
                self_signed_identity("fuzz stranger"),
            )

        scep_key, small_key, ec_key, stranger = await deferToThread(keys)
        scep_signer, _ = self_signed_identity("fuzz scep", key=scep_key)
        transaction = hashlib.sha256(os.urandom(16)).hexdigest().upper()
        csr = build_csr(scep_key, [[["CN", "fuzz scep"]], [["O", "otad fuzz"]]], static_challenge)
        pkcs_req = scep_message(
            envelope(csr.public_bytes(serialization.Encoding.DER), ra_cert), (scep_signer, scep_key), transaction_id=transaction
        )
        answer = await enrolled.request(b"POST", "/scep?operation=PKIOperation", pkcs_req, {b"content-type": [PKI_MESSAGE]})
        if answer.code != 200:
            raise RuntimeError(f"the PKCSReq seed was refused: HTTP {answer.code} {answer.body[:200]!r}")
        checks["PKCSReq (static challenge)"] = "200, CertRep"
        cert_poll = scep_message(
            envelope(issuer_and_subject(ca_cert.subject, csr.subject), ra_cert),
            (scep_signer, scep_key),
            message_type="20",
            transaction_id=transaction,
        )
        answer = await enrolled.request(b"POST", "/scep?operation=PKIOperation", cert_poll, {b"content-type": [PKI_MESSAGE]})
        if answer.code != 200:
            raise RuntimeError(f"the GetCertInitial seed was refused: HTTP {answer.code} {answer.body[:200]!r}")
        checks["GetCertInitial (CertPoll)"] = "200, CertRep"
    finally:
        await enrolled.close()
        await newcomer.close()
        await sink.close()
    assert newcomer.identity is not None
    return Seeds(
        port=daemon.port,
        ca_file=daemon.data_dir / "certs" / "ca.pem",
        apple=apple,
        user=user,
        password=password,
        auth_header=b"Basic " + base64.b64encode(f"{user}:{password}".encode()),
        apple_identity=newcomer.identity,
        attributes2=newcomer.device_attributes(None),
        phase2_body=phase2_body,
        fresh_challenges=challenges,
        used_challenge=used_challenge,
        identity3=enrolled.scep_identity,
        attributes3=enrolled.device_attributes(None),
        sink_identity=sink.scep_identity,
        sink_attributes=sink.device_attributes(None),
        phase3_body=phase3_body,
        ca_cert=ca_cert,
        ra_cert=ra_cert,
        scep_key=scep_key,
        scep_signer=scep_signer,
        static_challenge=static_challenge,
        pkcs_req=pkcs_req,
        cert_poll=cert_poll,
        issued_transaction=transaction,
        issued_serial=enrolled.scep_identity[0].serial_number,
        issued_subject=csr.subject,
        small_key=small_key,
        ec_key=ec_key,
        stranger=stranger,
        checks=checks,
    )


# ======================================================================== mutations

Made = tuple[str, "HTTPRequest | bytes | list[tuple[float, bytes]]", str]

# Which families of mutation each endpoint gets, and how often.
FAMILIES: dict[str, tuple[tuple[str, float], ...]] = {
    "/": (("framing", 4), ("headers", 3), ("target", 3)),
    "/CA": (("framing", 4), ("headers", 3), ("target", 3)),
    "/enroll": (("auth", 5), ("framing", 2), ("headers", 2), ("target", 1)),
    "/profile phase 2": (("plist", 5), ("asn1", 2), ("bytes", 1.5), ("framing", 1.5), ("headers", 1)),
    "/profile phase 3": (("plist", 5), ("asn1", 2), ("bytes", 1.5), ("framing", 1.5), ("headers", 1)),
    "/scep GET": (("query", 5), ("scep", 2.5), ("asn1", 0.5), ("framing", 1), ("headers", 1)),
    "/scep POST": (("scep", 4), ("asn1", 2), ("bytes", 1.5), ("query", 1), ("framing", 1), ("headers", 1)),
}
# Mutators that hold a connection for --slow-seconds are drawn less often after the first pass.
RARE = {"framing_slow_headers": 0.15, "framing_slow_body": 0.15, "framing_slow_request_line": 0.1, "plist_dag": 0.3}
# Phase-3 mutators whose accepted inputs stay in the device's stored attributes (big values, many keys): sent as the sink device.
STATEFUL = {"plist_dag", "plist_deep_nesting", "plist_many_keys", "plist_huge_string"}

BAD_DATES = (
    "",
    "garbage",
    "2024",
    "2024-01-01",
    "2024-13-01T00:00:00Z",
    "2024-02-30T00:00:00Z",
    "2024-01-01T25:61:61Z",
    "99999-01-01T00:00:00Z",
    "0000-00-00T00:00:00Z",
    "2024-01-01T00:00:00",
    "2024-01-01 00:00:00Z",
    "-2024-01-01T00:00:00Z",
    " 2024-01-01T00:00:00Z",
    "\u0662\u0660\u0662\u0664-01-01T00:00:00Z",
    "2024-01-01T00:00:00.5Z",
    "<![CDATA[2024]]>",
)
WRONG_VALUES: tuple[Any, ...] = (
    42,
    -1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    3.5,
    math.nan,
    math.inf,
    True,
    False,
    b"\x00\xff",
    datetime.datetime(2024, 1, 1),
    datetime.datetime(1, 1, 1),
    [],
    ["a", 1],
    {},
    {"a": "b"},
    "",
)
CONTROL = (
    "\x00",
    "\x01",
    "\x08",
    "\x0b",
    "\x0c",
    "\x1b[2J",
    "\x1c",
    "\x1d",
    "\x1e",
    "\x1f",
    "\x7f",
    "\r\n",
    "\n",
    "\u2028",
    "\x85",
    "\ud800",
    "\udfff",
    "\ufeff",
    "\uffff",
    "\U0010ffff",
)
HEADER_BYTES = (
    b"\x0b",
    b"\x1c",
    b"\x1e",
    b"\x1d",
    b"\x1f",
    b"\x0c",
    b"\x00",
    b"\x7f",
    b"\x80",
    b"\xff",
    b"\x85",
    b"\x08",
    b"\x1b",
    b"\xa0",
)


def _printable_or_utf8(text: str) -> bytes:
    try:
        return bytes(asn1_core.PrintableString(text).dump(force=True))
    except (ValueError, TypeError):
        return bytes(asn1_core.UTF8String(text).dump())


class Mutator:
    """Makes the cases for one endpoint from the seeds, deterministically for a given ``rng`` seed (key material aside)."""

    def __init__(self, seeds: Seeds, endpoint: str, rng: random.Random, slow_seconds: float, slow_interval: float) -> None:
        self.seeds = seeds
        self.endpoint = endpoint
        self.rng = rng
        self.slow_seconds = slow_seconds
        self.slow_interval = slow_interval
        self.families = FAMILIES[endpoint]
        self.phase = 2 if endpoint == "/profile phase 2" else 3
        self.registry: dict[str, list[tuple[str, Callable[[], Made]]]] = {}
        self._orders: dict[tuple[str, int, int], list[Any]] = {}
        self._content: bytes | None = None
        self._sink = False
        for name in sorted(dir(self)):
            if name.startswith("m_"):
                family, _, _ = name[2:].partition("_")
                self.registry.setdefault(family, []).append((name[2:], getattr(self, name)))

    # ------------------------------------------------------------ plumbing

    def cases(self, count: int) -> list[Case]:
        """``count`` cases: every applicable mutator once (in a fixed order), then weighted random picks."""
        applicable = [(family, weight) for family, weight in self.families if family in self.registry]
        plan: list[tuple[str, Callable[[], Made]]] = [entry for family, _ in applicable for entry in self.registry[family]]
        cases = []
        for index in range(count):
            if index < len(plan):
                name, make = plan[index]
            else:
                family = self.rng.choices([f for f, _ in applicable], [w for _, w in applicable])[0]
                entries = self.registry[family]
                name, make = self.rng.choices(entries, [RARE.get(n, 1.0) for n, _ in entries])[0]
            self._content = None
            self._sink = self.endpoint == "/profile phase 3" and name in STATEFUL
            description, made, mode = make()
            if isinstance(made, HTTPRequest):
                chunks = [(0.0, made.encode())]
            elif isinstance(made, bytes):
                chunks = [(0.0, made)]
            else:
                chunks = made
            cases.append(Case(self.endpoint, name, description, chunks, mode, index, content=self._content))
        return cases

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"Host", self.seeds.host), (b"User-Agent", b"otad-fuzz/1.0 (iPhone)")]

    def base(self) -> HTTPRequest:
        """The valid request for this endpoint."""
        endpoint = self.endpoint
        if endpoint in ("/", "/CA"):
            return HTTPRequest(b"GET", endpoint.encode(), self.headers())
        if endpoint == "/enroll":
            return HTTPRequest(b"GET", b"/enroll", [*self.headers(), (b"Authorization", self.seeds.auth_header)])
        if endpoint == "/scep GET":
            operation = self.rng.choice(("GetCACaps", "GetCACert", "PKIOperation"))
            if operation == "PKIOperation":
                return self.wrap(self.body_seed())
            return HTTPRequest(b"GET", f"/scep?operation={operation}".encode(), self.headers())
        return self.wrap(self.body_seed())

    def body_seed(self) -> bytes:
        if self.endpoint == "/profile phase 2":
            return self.seeds.phase2_body
        if self.endpoint == "/profile phase 3":
            return self.seeds.phase3_body
        if self.endpoint.startswith("/scep"):
            return self.seeds.pkcs_req if self.rng.random() < 0.7 else self.seeds.cert_poll
        return b""

    def wrap(self, body: bytes) -> HTTPRequest:
        """A body (or, for /scep GET, a PKIMessage) in the request this endpoint expects."""
        if self.endpoint.startswith("/profile"):
            return HTTPRequest(b"POST", b"/profile", [*self.headers(), (b"Content-Type", PKCS7_SIGNATURE)], body)
        if self.endpoint == "/scep GET":
            message = quote(base64.b64encode(body).decode("ascii"), safe="")
            return HTTPRequest(b"GET", b"/scep?operation=PKIOperation&message=" + message.encode("ascii"), self.headers())
        if self.endpoint == "/scep POST":
            return HTTPRequest(b"POST", b"/scep?operation=PKIOperation", [*self.headers(), (b"Content-Type", PKI_MESSAGE)], body)
        return HTTPRequest(b"POST", self.endpoint.encode(), self.headers(), body)

    def pick(self, options: Sequence[Any]) -> Any:
        """One of ``options``: each call site goes through all of them (in a seeded random order) before repeating any."""
        caller = sys._getframe(1)
        key = (caller.f_code.co_name, caller.f_lineno, len(options))
        order = self._orders.get(key)
        if order is None:
            order = self._orders[key] = [self.rng.sample(range(len(options)), len(options)), 0]
        indices, used = order
        order[1] = used + 1
        return options[indices[used % len(indices)]]

    # ------------------------------------------------------------ bytes and ASN.1

    def m_bytes_mutate(self) -> Made:
        description, body = mutate_bytes(self.rng, self.body_seed())
        return f"body bytes: {description}", self.wrap(body), "normal"

    def m_asn1_mutate(self) -> Made:
        body = self.body_seed()
        steps = []
        for _ in range(self.pick((1, 1, 1, 2, 3))):
            description, body = mutate_asn1(self.rng, body)
            steps.append(description)
        return f"CMS {'; then '.join(steps)}", self.wrap(body), "normal"

    def m_asn1_chain_certificate(self) -> Made:
        """Mutate one embedded certificate other than the signer's: the signature still verifies, the chain is odd."""
        body = self.body_seed()
        try:
            tree = parse_asn1(body)
            signed_data = tree[0].children[1].children[0]  # type: ignore[index]
            bag = next(node for node in signed_data.children or [] if node.tag == b"\xa0")
        except (ValueError, IndexError, StopIteration, TypeError):
            return self.m_asn1_mutate()
        assert bag.children is not None
        if len(bag.children) > 1:
            position = self.rng.randrange(1, len(bag.children))
            description, mutated = mutate_asn1(self.rng, bag.children[position].encode())
            bag.children[position] = Node(b"", raw=mutated)
        else:
            position = 1
            description, mutated = mutate_asn1(self.rng, bag.children[0].encode())
            bag.children.append(Node(b"", raw=mutated))
        return f"embedded certificate #{position}: {description}", self.wrap(tree[0].encode()), "normal"

    # ------------------------------------------------------------ plists, re-signed

    def attributes(self) -> dict[str, Any]:
        """The device attributes; in phase 2 with a fresh, a used or no CHALLENGE."""
        if self.phase == 3:
            return dict(self.seeds.sink_attributes if self._sink else self.seeds.attributes3)
        attributes = dict(self.seeds.attributes2)
        draw = self.rng.random()
        if draw < 0.35 and self.seeds.fresh_challenges:
            attributes["CHALLENGE"] = self.seeds.fresh_challenges.pop()
        elif draw < 0.85:
            attributes["CHALLENGE"] = self.seeds.used_challenge
        return attributes

    def sign(self, content: bytes) -> bytes:
        """Sign like the device does: phase 2 by the Apple identity (SHA-1, no attributes, BER), phase 3 by otad's identity."""
        if self.phase == 2:
            return sign_as_device(content, self.seeds.apple_identity, self.seeds.apple.chain(), ber=self.rng.random() < 0.7)
        return sign_as_device(content, self.seeds.sink_identity if self._sink else self.seeds.identity3)

    def signed(self, description: str, content: bytes) -> Made:
        self._content = content
        who = ", as the second device" if self._sink else ""
        return f"plist (re-signed{who}, {len(content)} bytes): {description}", self.wrap(self.sign(content)), "normal"

    def dump(self, value: Any) -> tuple[str, bytes]:
        """``value`` as an XML plist (or, one time in three, binary); whichever plistlib can write, else a hand-made binary plist."""
        formats = [("XML", plistlib.FMT_XML), ("binary", plistlib.FMT_BINARY)]
        if self.rng.random() < 0.3:
            formats.reverse()
        for name, fmt in formats:
            try:
                return name, plistlib.dumps(value, fmt=fmt, sort_keys=False)
            except (TypeError, ValueError, OverflowError, UnicodeEncodeError):
                continue
        plist = BinaryPlist()
        top = plist.reserve()
        plist.strings_dict(
            {str(key): str(item) for key, item in value.items()} if isinstance(value, dict) else {"VALUE": str(value)}, at=top
        )
        return "hand-made binary", plist.build(top)

    def m_plist_valid(self) -> Made:
        attributes = self.attributes()
        kind, content = self.dump(attributes)
        return self.signed(f"unchanged attributes ({kind}, CHALLENGE {'present' if 'CHALLENGE' in attributes else 'absent'})", content)

    def m_plist_malformed_date(self) -> Made:
        attributes = self.attributes()
        key = self.pick(("UDID", "CHALLENGE", "SERIAL", "VERSION", "SIGNED_AT", "EXPIRY"))
        bad = self.pick(BAD_DATES)
        return self.signed(f"{key} = <date>{bad}</date>", malformed_date_plist(attributes, key, bad))

    def m_plist_deep_nesting(self) -> Made:
        attributes = self.attributes()
        key = self.pick(("NESTED", "PRODUCT", "DEVICE_NAME", "SERIAL"))
        kind = self.pick(("XML array", "XML array", "XML dict", "binary array", "binary dict"))
        if kind == "XML array":
            depth = self.pick((100, 999, 1100, 2500, 3900))
        elif kind == "XML dict":
            depth = self.pick((100, 999, 1100, 2400))
        else:
            depth = self.pick((100, 999, 1100, 4000))
        return self.signed(f"{key} = {kind} nested {depth} deep", nested_plist(attributes, key, kind, depth))

    def m_plist_self_reference(self) -> Made:
        attributes = self.attributes()
        variant = self.pick(SELF_REFERENCES)
        key = self.pick(("LOOP", "PRODUCT", "SERIAL"))
        return self.signed(f"binary plist where {key} is {variant}", self_referencing_plist(attributes, key, variant))

    def m_plist_dag(self) -> Made:
        """A small binary plist whose shared references expand exponentially (a "billion laughs" without entities)."""
        attributes = _string_attributes(self.attributes())
        plist = BinaryPlist()
        top = plist.reserve()
        depth = self.pick((8, 12, 14, 16))
        leaf = plist.text("x")
        ref = plist.array([leaf, leaf])
        for _ in range(depth - 1):
            ref = plist.array([ref, ref])
        plist.strings_dict(attributes, [("DAG", ref)], at=top)
        return self.signed(f"binary plist with DAG = 2^{depth} shared leaves", plist.build(top))

    def m_plist_huge_string(self) -> Made:
        attributes = self.attributes()
        key = self.pick(("UDID", "SERIAL", "PRODUCT", "VERSION", "DEVICE_NAME", "IMEI", "NOTE", "CHALLENGE"))
        size = self.pick((256, 4096, 16384, 40000, 70000))
        unit = self.pick(("A", "\u00e9", "\u2603", "$UDID", "${SERIAL}", "$$", "\\", "/", "=", "+", ",", "%s", "{}", "<&>", "CN=x,"))
        value = (unit * (size // len(unit) + 1))[:size]
        if self.rng.random() < 0.3 and isinstance(attributes.get(key), str):
            value = attributes[key] + value
        attributes[key] = value
        kind, content = self.dump(attributes)
        return self.signed(f"{key} = {unit!r} x {size} ({kind})", content)

    def m_plist_wrong_type(self) -> Made:
        attributes = self.attributes()
        key = self.pick(("UDID", "CHALLENGE", "SERIAL", "PRODUCT", "VERSION", "DEVICE_NAME", "IMEI", "MEID", "<top level>"))
        if key == "<top level>":
            value: Any = self.pick(([attributes], "a string", 42, b"data", [], 1.5, True))
            kind, content = self.dump(value)
            return self.signed(f"top-level value is {type(value).__name__} ({kind})", content)
        value = self.pick(WRONG_VALUES)
        attributes[key] = value
        kind, content = self.dump(attributes)
        return self.signed(f"{key} = {value!r} ({type(value).__name__}, {kind})", content)

    def m_plist_control_characters(self) -> Made:
        attributes = self.attributes()
        key = self.pick(("UDID", "SERIAL", "PRODUCT", "VERSION", "DEVICE_NAME", "CHALLENGE", "NOTE"))
        character = self.pick(CONTROL)
        base = str(attributes.get(key, "value"))
        value = self.pick((base + character, character + base, base[: len(base) // 2] + character + base[len(base) // 2 :], character))
        attributes[key] = value
        kind = self.pick(("binary", "binary", "XML raw", "XML entity"))
        if kind == "binary":
            plist = BinaryPlist()
            top = plist.reserve()
            plist.strings_dict(_string_attributes(attributes), at=top)
            content = plist.build(top)
        elif kind == "XML raw":
            attributes.pop(key)
            content = xml_plist(xml_dict(attributes, f"<key>{key}</key><string>{xml_escape(value)}</string>"))
        else:
            attributes.pop(key)
            entity = "".join(f"&#x{ord(c):x};" if ord(c) < 0x20 or 0xD800 <= ord(c) <= 0xDFFF else xml_escape(c) for c in value)
            content = xml_plist(xml_dict(attributes, f"<key>{key}</key><string>{entity}</string>"))
        return self.signed(f"{key} = {value!r} ({kind})", content)

    def m_plist_challenge(self) -> Made:
        attributes = self.attributes()
        fresh = self.seeds.fresh_challenges.pop() if self.seeds.fresh_challenges and self.phase == 2 else self.seeds.used_challenge
        variants: list[tuple[str, Any]] = [
            ("missing", None),
            ("empty", ""),
            ("a wrong token", base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")),
            ("the used phase-1 challenge", self.seeds.used_challenge),
            ("a fresh challenge", fresh),
            ("a fresh challenge as <data>", fresh.encode()),
            ("<data> that is not UTF-8", b"\xff\xfe\xfd"),
            ("fresh + space", fresh + " "),
            ("space + fresh", " " + fresh),
            ("fresh lower-cased", fresh.lower()),
            ("fresh + newline", fresh + "\n"),
            ("an integer", 12345),
            ("an array", [fresh]),
            ("a dict", {"CHALLENGE": fresh}),
            ("60000 characters", "A" * 60000),
            ("the static SCEP challenge", self.seeds.static_challenge),
        ]
        description, value = self.pick(variants)
        attributes.pop("CHALLENGE", None)
        if description == "missing" and self.rng.random() < 0.5:
            extra = (
                f"<key>CHALLENGE</key><string>{xml_escape(self.seeds.used_challenge)}</string><key>CHALLENGE</key><string>{fresh}</string>"
            )
            return self.signed("CHALLENGE twice (used, then fresh)", xml_plist(xml_dict(attributes, extra)))
        if value is not None:
            attributes["CHALLENGE" if self.rng.random() < 0.9 else "challenge"] = value
        kind, content = self.dump(attributes)
        return self.signed(f"CHALLENGE is {description} ({kind})", content)

    def m_plist_udid(self) -> Made:
        attributes = self.attributes()
        udid = str(attributes["UDID"])
        other = PHASE2_UDID if self.phase == 3 else PHASE3_UDID
        variants: list[tuple[str, Any]] = [
            ("missing", None),
            ("empty", ""),
            ("7 characters", "A" * 7),
            ("8 characters", "A" * 8),
            ("64 characters", "A" * 64),
            ("65 characters", "A" * 65),
            ("UDID + newline", udid + "\n"),
            ("UDID + NUL", udid + "\x00"),
            ("with a slash", udid[:8] + "/" + udid[9:]),
            ("with '='", udid[:8] + "=" + udid[9:]),
            ("dashes only", "-" * 12),
            ("a path", "../../../../etc"),
            ("another device's", other),
            ("lower-cased", udid.lower()),
            ("full-width digits", "\uff10" * 12),
            ("UDID + space", udid + " "),
            ("a CN injection", udid + ",CN=admin"),
        ]
        description, value = self.pick(variants)
        if value is None:
            attributes.pop("UDID")
        else:
            attributes["UDID"] = value
        if description == "lower-cased" and self.rng.random() < 0.5:
            attributes.pop("UDID")
            extra = f"<key>UDID</key><string>{other}</string><key>UDID</key><string>{udid}</string>"
            return self.signed("UDID twice (another device's, then ours)", xml_plist(xml_dict(attributes, extra)))
        kind, content = self.dump(attributes)
        return self.signed(f"UDID is {description} ({kind})", content)

    def m_plist_xml_oddities(self) -> Made:
        attributes = self.attributes()
        body = xml_dict(attributes)
        laughs = "".join(
            f'<!ENTITY l{i} "{"&l" + str(i - 1) + ";" if i else "ha"}{("&l" + str(i - 1) + ";") * 9 if i else ""}">' for i in range(8)
        )
        variants: list[tuple[str, bytes]] = [
            (
                "an internal entity declaration (billion laughs)",
                (
                    '<?xml version="1.0"?>\n<!DOCTYPE plist ['
                    + laughs
                    + ']>\n<plist version="1.0">'
                    + body.replace("</dict>", "<key>L</key><string>&l7;</string></dict>")
                    + "</plist>"
                ).encode(),
            ),
            (
                "an external entity",
                (
                    '<?xml version="1.0"?>\n<!DOCTYPE plist [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n<plist version="1.0">'
                    + body.replace("</dict>", "<key>X</key><string>&x;</string></dict>")
                    + "</plist>"
                ).encode(),
            ),
            ("invalid UTF-8 in a string", xml_plist(body).replace(b"<string>", b"<string>\xff\xfe", 1)),
            ("UTF-16 with a BOM", xml_plist(body, declaration='<?xml version="1.0" encoding="UTF-16"?>\n').decode().encode("utf-16")),
            ("a UTF-8 BOM", b"\xef\xbb\xbf" + xml_plist(body)),
            ("no <plist> root", ('<?xml version="1.0"?>\n' + body).encode()),
            ("an unknown element as a value", xml_plist(xml_dict(attributes, "<key>X</key><foo>bar</foo>"))),
            ("a huge <integer>", xml_plist(xml_dict(attributes, "<key>X</key><integer>" + "9" * 5000 + "</integer>"))),
            ("a non-numeric <integer>", xml_plist(xml_dict(attributes, "<key>X</key><integer>0x10</integer>"))),
            ("an empty <integer>", xml_plist(xml_dict(attributes, "<key>X</key><integer></integer>"))),
            ("<real>nan</real>", xml_plist(xml_dict(attributes, "<key>X</key><real>nan</real>"))),
            ("<real>1e400</real>", xml_plist(xml_dict(attributes, "<key>X</key><real>1e400</real>"))),
            ("<real>abc</real>", xml_plist(xml_dict(attributes, "<key>X</key><real>abc</real>"))),
            ("invalid base64 <data>", xml_plist(xml_dict(attributes, "<key>X</key><data>!!!*</data>"))),
            ("a key without a value", xml_plist(xml_dict(attributes, "<key>X</key>"))),
            ("a value without a key", xml_plist(xml_dict(attributes, "<string>orphan</string>"))),
            (
                "CDATA, a comment and a processing instruction",
                xml_plist(xml_dict(attributes, "<!-- c --><?pi x?><key>X</key><string><![CDATA[<>&]]></string>")),
            ),
            ("an unclosed <dict>", xml_plist(body).replace(b"</dict>", b"")),
            ("<plist version=99>", xml_plist(body).replace(b'version="1.0">', b'version="99">')),
            ("an empty document", b""),
            ("only the XML declaration", b'<?xml version="1.0" encoding="UTF-8"?>\n'),
            (
                "a latin-1 declaration with latin-1 bytes",
                xml_plist(body, declaration='<?xml version="1.0" encoding="ISO-8859-1"?>\n').replace(b"<string>", b"<string>\xe9", 1),
            ),
            ("<true>text</true>", xml_plist(xml_dict(attributes, "<key>X</key><true>text</true>"))),
            ("60000 &amp; entities", xml_plist(xml_dict(attributes, "<key>X</key><string>" + "&amp;" * 11000 + "</string>"))),
        ]
        description, content = self.pick(variants)
        return self.signed(description, content)

    def m_plist_binary_oddities(self) -> Made:
        attributes = self.attributes()
        content = bytearray(plistlib.dumps(attributes, fmt=plistlib.FMT_BINARY))
        trailer = len(content) - 32
        variant = self.pick(
            (
                "offset size",
                "reference size",
                "object count",
                "top object",
                "offset table offset",
                "object bytes",
                "truncated",
                "version",
                "dict marker",
                "an overlong integer",
            )
        )
        if variant == "offset size":
            content[trailer + 6] = self.pick((0, 3, 5, 9, 255))
        elif variant == "reference size":
            content[trailer + 7] = self.pick((0, 3, 9, 255))
        elif variant == "object count":
            content[trailer + 8 : trailer + 16] = self.pick((0, 1, 2**31, 2**63 - 1)).to_bytes(8, "big")
        elif variant == "top object":
            content[trailer + 16 : trailer + 24] = self.pick((1, 255, 2**32, 2**63 - 1)).to_bytes(8, "big")
        elif variant == "offset table offset":
            content[trailer + 24 : trailer + 32] = self.pick((0, 7, 8, trailer + 31, 2**40)).to_bytes(8, "big")
        elif variant == "object bytes":
            content = bytearray(flip_bytes(self.rng, bytes(content[8:trailer]), self.pick((1, 2, 8)))).join(
                (content[:8], content[trailer:])
            )
            content = bytearray(b"bplist00") + content[8:]
        elif variant == "truncated":
            content = content[: self.rng.randrange(8, len(content))]
        elif variant == "version":
            content[6:8] = self.pick((b"01", b"15", b"\xff\xff"))
        elif variant == "dict marker":
            content[8] = self.pick((0xDF, 0xAF, 0x6F, 0x0F, 0xFF, 0x80, 0xC2))
        else:
            content[8:9] = b"\x14" + os.urandom(16)
        return self.signed(f"binary plist with a corrupted {variant}", bytes(content))

    def m_plist_many_keys(self) -> Made:
        attributes = self.attributes()
        count = self.pick((500, 3000))
        for index in range(count):
            attributes[f"K{index:05d}"] = "v"
        plist = BinaryPlist()
        top = plist.reserve()
        plist.strings_dict(_string_attributes(attributes), at=top)
        return self.signed(f"{count} extra keys (binary)", plist.build(top))

    def m_plist_signer(self) -> Made:
        attributes = self.attributes()
        content = plistlib.dumps(attributes)
        apple_cert, apple_key = self.seeds.apple_identity
        cert3, key3 = self.seeds.identity3
        stranger_cert, stranger_key = self.seeds.stranger
        variants: list[tuple[str, Callable[[], bytes]]] = [
            ("signed by an untrusted self-signed identity", lambda: sign_cms(content, stranger_cert, stranger_key)),
            ("Apple identity without its chain", lambda: sign_cms(content, apple_cert, apple_key, digest="sha1", signed_attributes=None)),
            (
                "Apple identity with signed attributes and SHA-512",
                lambda: sign_cms(content, apple_cert, apple_key, digest="sha512", certificates=[apple_cert, *self.seeds.apple.chain()]),
            ),
            ("otad identity without signed attributes", lambda: sign_cms(content, cert3, key3, signed_attributes=None)),
            ("otad identity plus the Apple chain", lambda: sign_cms(content, cert3, key3, certificates=[cert3, *self.seeds.apple.chain()])),
            ("otad identity carried 300 times", lambda: sign_cms(content, cert3, key3, certificates=[cert3] * 300)),
            ("signer certificate left out", lambda: sign_cms(content, cert3, key3, certificates=[stranger_cert])),
            ("otad identity, SHA-1", lambda: sign_cms(content, cert3, key3, digest="sha1")),
            (
                "the Apple device CA signs directly",
                lambda: sign_cms(
                    content,
                    self.seeds.apple.device_ca,
                    self.seeds.apple.device_ca_key,
                    digest="sha1",
                    signed_attributes=None,
                    certificates=self.seeds.apple.chain(),
                ),
            ),
        ]
        description, make = self.pick(variants)
        return f"plist signer: {description}", self.wrap(make()), "normal"

    # ------------------------------------------------------------ SCEP messages, re-signed

    def csr(
        self,
        *,
        key: Any = None,
        challenge: str | None = "static",
        subject: x509.Name | None = None,
        extensions: Sequence[x509.Extension[Any]] = (),
    ) -> bytes:
        """A PKCS#10 request (DER), by default for the SCEP key with the static challenge."""
        key = key or self.seeds.scep_key
        builder = x509.CertificateSigningRequestBuilder().subject_name(
            subject or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fuzz scep")])
        )
        if challenge is not None:
            secret = self.seeds.static_challenge if challenge == "static" else challenge
            builder = builder.add_attribute(x509.oid.AttributeOID.CHALLENGE_PASSWORD, secret.encode("utf-8", "surrogatepass"))
        for extension in extensions:
            builder = builder.add_extension(extension.value, critical=extension.critical)
        return builder.sign(key, hashes.SHA256() if not isinstance(key, ec.EllipticCurvePrivateKey) else hashes.SHA256()).public_bytes(
            serialization.Encoding.DER
        )

    def pki(self, content: bytes | None = None, *, sealed: bytes | None = None, **options: Any) -> bytes:
        """A PKIMessage around ``content`` (enveloped to the RA) or around ``sealed`` as it is; signed by the SCEP key."""
        if sealed is None:
            self._content = content if content is not None else self.csr()
            sealed = envelope(self._content, self.seeds.ra_cert)
        signer = options.pop("signer", (self.seeds.scep_signer, self.seeds.scep_key))
        return scep_message(sealed, signer, **options)

    def scep(self, description: str, message: bytes) -> Made:
        return f"SCEP (re-signed): {description}", self.wrap(message), "normal"

    def m_scep_valid(self) -> Made:
        if self.rng.random() < 0.5:
            return self.scep("the PKCSReq seed as it is (same transaction: the same certificate again)", self.seeds.pkcs_req)
        return self.scep("a new PKCSReq with the static challenge", self.pki())

    def m_scep_message_type(self) -> Made:
        value = self.pick(
            ("19", "20", "21", "22", "17", "3", "0", "99", "9999", "00019", "abc", "", "-19", " 19", "\u0661\u0669", "19\x00", "1" * 300)
        )
        content = issuer_and_subject(self.seeds.ca_cert.subject, self.seeds.issued_subject) if value in ("20", "00020") else None
        attributes = [
            (OID_SCEP_MESSAGE_TYPE, _printable_or_utf8(value)),
            (OID_SCEP_TRANSACTION_ID, _printable_or_utf8(hashlib.sha256(os.urandom(8)).hexdigest())),
            (OID_SCEP_SENDER_NONCE, bytes(asn1_core.OctetString(os.urandom(16)).dump())),
        ]
        return self.scep(f"messageType {value!r}", self.pki(content, attributes=attributes))

    def m_scep_transaction_id(self) -> Made:
        value = self.pick(
            (
                "",
                "A" * 256,
                "A" * 257,
                "A" * 40000,
                "\x00abc",
                "tab\there",
                "\u00e9t\u00e9",
                "../../x",
                "' OR 1=1 --",
                self.seeds.issued_transaction,
                self.seeds.issued_transaction.lower(),
                "\u2603" * 50,
            )
        )
        attributes = [
            (OID_SCEP_MESSAGE_TYPE, _printable_or_utf8(self.pick(("19", "20")))),
            (OID_SCEP_TRANSACTION_ID, _printable_or_utf8(value)),
            (OID_SCEP_SENDER_NONCE, bytes(asn1_core.OctetString(os.urandom(16)).dump())),
        ]
        return self.scep(f"transactionID {value[:40]!r} ({len(value)} characters)", self.pki(attributes=attributes))

    def m_scep_sender_nonce(self) -> Made:
        size = self.pick((0, 1, 7, 8, 16, 64, 65, 1000, 40000))
        if self.rng.random() < 0.2:
            nonce = _printable_or_utf8("A" * 16)
            description = "senderNonce as a PrintableString"
        else:
            nonce = bytes(asn1_core.OctetString(os.urandom(size)).dump())
            description = f"senderNonce of {size} bytes"
        attributes = [
            (OID_SCEP_MESSAGE_TYPE, _printable_or_utf8("19")),
            (OID_SCEP_TRANSACTION_ID, _printable_or_utf8(hashlib.sha256(os.urandom(8)).hexdigest())),
            (OID_SCEP_SENDER_NONCE, nonce),
        ]
        return self.scep(description, self.pki(attributes=attributes))

    def m_scep_attributes(self) -> Made:
        message_type = (OID_SCEP_MESSAGE_TYPE, _printable_or_utf8("19"))
        transaction = (OID_SCEP_TRANSACTION_ID, _printable_or_utf8(hashlib.sha256(os.urandom(8)).hexdigest()))
        nonce = (OID_SCEP_SENDER_NONCE, bytes(asn1_core.OctetString(os.urandom(16)).dump()))
        variants: list[tuple[str, list[tuple[str, bytes]]]] = [
            ("no messageType", [transaction, nonce]),
            ("no transactionID", [message_type, nonce]),
            ("no senderNonce", [message_type, transaction]),
            ("no SCEP attributes", []),
            ("messageType as INTEGER", [(OID_SCEP_MESSAGE_TYPE, der_integer(19)), transaction, nonce]),
            ("messageType as OCTET STRING", [(OID_SCEP_MESSAGE_TYPE, bytes(asn1_core.OctetString(b"19").dump())), transaction, nonce]),
            ("messageType as BMPString", [(OID_SCEP_MESSAGE_TYPE, bytes(asn1_core.BMPString("19").dump())), transaction, nonce]),
            ("transactionID as INTEGER", [message_type, (OID_SCEP_TRANSACTION_ID, der_integer(2**200)), nonce]),
            ("messageType twice", [message_type, (OID_SCEP_MESSAGE_TYPE, _printable_or_utf8("20")), transaction, nonce]),
            ("a NULL messageType", [(OID_SCEP_MESSAGE_TYPE, b"\x05\x00"), transaction, nonce]),
            (
                "pkiStatus and failInfo in a request",
                [
                    message_type,
                    transaction,
                    nonce,
                    ("2.16.840.1.113733.1.9.3", _printable_or_utf8("0")),
                    ("2.16.840.1.113733.1.9.4", _printable_or_utf8("2")),
                ],
            ),
            (
                "a 30000-byte unknown attribute",
                [message_type, transaction, nonce, ("1.2.3.4.5", bytes(asn1_core.OctetString(b"x" * 30000).dump()))],
            ),
        ]
        description, attributes = self.pick(variants)
        return self.scep(f"signed attributes: {description}", self.pki(attributes=attributes))

    def m_scep_envelope(self) -> Made:
        csr = self.csr()
        stranger_cert, _ = self.seeds.stranger
        variants: list[tuple[str, Callable[[], bytes]]] = [
            ("garbage instead of EnvelopedData", lambda: os.urandom(self.pick((0, 1, 64, 3000)))),
            ("the CSR, not enveloped", lambda: csr),
            ("enveloped to a stranger", lambda: envelope(csr, stranger_cert)),
            ("enveloped to the CA instead of the RA", lambda: envelope(csr, self.seeds.ca_cert)),
            ("DES-EDE3 envelope", lambda: envelope(csr, self.seeds.ra_cert, aes=False)),
            ("an enveloped 0-byte CSR", lambda: envelope(b"", self.seeds.ra_cert)),
            ("enveloped garbage", lambda: envelope(os.urandom(self.pick((1, 100, 5000))), self.seeds.ra_cert)),
        ]
        if self.rng.random() < 0.4:
            description, sealed = mutate_asn1(self.rng, envelope(csr, self.seeds.ra_cert))
            return self.scep(f"EnvelopedData {description}", self.pki(sealed=sealed))
        description, make = self.pick(variants)
        return self.scep(description, self.pki(sealed=make()))

    def cri(self, subject: bytes, key: Any, attributes: Sequence[bytes], version: bytes = b"\x02\x01\x00") -> bytes:
        spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return tlv(0x30, version + subject + spki + tlv(0xA0, b"".join(attributes)))

    def signed_csr(self, info: bytes, key: rsa.RSAPrivateKey | None = None) -> bytes:
        key = key or self.seeds.scep_key
        return tlv(0x30, info + SHA256_WITH_RSA + tlv(0x03, b"\x00" + key.sign(info, padding.PKCS1v15(), hashes.SHA256())))

    def m_scep_csr(self) -> Made:
        seeds = self.seeds
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fuzz scep")]).public_bytes()

        def challenge(value: bytes) -> bytes:
            return tlv(0x30, der_oid(OID_CHALLENGE_PASSWORD) + tlv(0x31, value))

        def with_attributes(*attributes: bytes) -> bytes:
            return self.signed_csr(self.cri(name, seeds.scep_key, attributes))

        static = seeds.static_challenge
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            long_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "C" * 10000, _validate=False)])
        many = x509.Name(
            [x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"u{i}")]) for i in range(500)]
        )
        odd = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a\x00b\x1b[2J\u202e", _validate=False)])
        san = x509.SubjectAlternativeName([x509.DNSName(f"h{i}.example") for i in range(1500)])
        spoof = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"urn:x-otad:udid:{PHASE2_UDID}")])
        ca = x509.BasicConstraints(ca=True, path_length=None)
        variants: list[tuple[str, Callable[[], bytes]]] = [
            ("garbage CSR", lambda: os.urandom(self.pick((1, 50, 2000)))),
            ("no challengePassword", lambda: self.csr(challenge=None)),
            ("a wrong challenge", lambda: self.csr(challenge="wrong-" + os.urandom(8).hex())),
            ("the used phase-1 challenge", lambda: self.csr(challenge=seeds.used_challenge)),
            ("an empty challenge", lambda: self.csr(challenge="")),
            ("a 10000-character challenge", lambda: self.csr(challenge="x" * 10000)),
            ("a challenge with NUL", lambda: self.csr(challenge=static + "\x00")),
            ("challenge as BMPString", lambda: with_attributes(challenge(bytes(asn1_core.BMPString(static).dump())))),
            ("challenge as IA5String", lambda: with_attributes(challenge(bytes(asn1_core.IA5String(static).dump())))),
            ("challenge as INTEGER", lambda: with_attributes(challenge(der_integer(7)))),
            ("challenge with two values", lambda: with_attributes(challenge(_printable_or_utf8(static) + _printable_or_utf8("other")))),
            (
                "challengePassword twice",
                lambda: with_attributes(challenge(_printable_or_utf8("wrong")), challenge(_printable_or_utf8(static))),
            ),
            ("an empty challengePassword SET", lambda: with_attributes(challenge(b""))),
            (
                "CSR version 5",
                lambda: self.signed_csr(self.cri(name, seeds.scep_key, [challenge(_printable_or_utf8(static))], b"\x02\x01\x05")),
            ),
            (
                "CSR version -1",
                lambda: self.signed_csr(self.cri(name, seeds.scep_key, [challenge(_printable_or_utf8(static))], b"\x02\x01\xff")),
            ),
            ("a bad CSR signature", lambda: flip_bytes(self.rng, self.csr(), 1)[:-4] + self.csr()[-4:]),
            ("an EC key", lambda: self.csr(key=seeds.ec_key)),
            ("an RSA-1024 key", lambda: self.csr(key=seeds.small_key)),
            ("a 10000-character CN", lambda: self.csr(subject=long_name)),
            ("500 RDNs", lambda: self.csr(subject=many)),
            ("control characters in the CN", lambda: self.csr(subject=odd)),
            ("an empty subject", lambda: self.csr(subject=x509.Name([]))),
            ("1500 SAN DNS names", lambda: self.csr(extensions=[x509.Extension(san.oid, False, san)])),
            ("a SAN claiming another device's UDID", lambda: self.csr(extensions=[x509.Extension(spoof.oid, False, spoof)])),
            ("basicConstraints CA:TRUE", lambda: self.csr(extensions=[x509.Extension(ca.oid, True, ca)])),
            (
                "an unknown critical extension",
                lambda: self.csr(
                    extensions=[
                        x509.Extension(
                            x509.ObjectIdentifier("1.2.3.4.99"),
                            True,
                            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4.99"), b"\x05\x00"),
                        )
                    ]
                ),
            ),
            (
                "an extensionRequest that is not Extensions",
                lambda: with_attributes(
                    challenge(_printable_or_utf8(static)), tlv(0x30, der_oid(OID_EXTENSION_REQUEST) + tlv(0x31, b"\x04\x03abc"))
                ),
            ),
        ]
        if self.rng.random() < 0.3:
            info = x509.load_der_x509_csr(self.csr()).tbs_certrequest_bytes
            description, mutated = mutate_asn1(self.rng, info)
            return self.scep(f"CertificationRequestInfo {description}, CSR re-signed", self.pki(self.signed_csr(mutated)))
        if self.rng.random() < 0.1:
            description, mutated = mutate_asn1(self.rng, self.csr())
            return self.scep(f"CSR {description}", self.pki(mutated))
        description, make = self.pick(variants)
        return self.scep(f"CSR with {description}", self.pki(make()))

    def m_scep_cert_poll(self) -> Made:
        seeds = self.seeds
        good = issuer_and_subject(seeds.ca_cert.subject, seeds.issued_subject)
        variants: list[tuple[str, bytes, str]] = [
            ("GetCertInitial for the issued transaction", good, seeds.issued_transaction),
            ("GetCertInitial for an unknown transaction", good, hashlib.sha256(os.urandom(8)).hexdigest()),
            ("GetCertInitial with garbage IssuerAndSubject", os.urandom(40), seeds.issued_transaction),
            (
                "GetCertInitial with the names swapped",
                issuer_and_subject(seeds.issued_subject, seeds.ca_cert.subject),
                seeds.issued_transaction,
            ),
            ("GetCertInitial with an empty SEQUENCE", b"\x30\x00", seeds.issued_transaction),
        ]
        if self.rng.random() < 0.4:
            description, content = mutate_asn1(self.rng, good)
            return self.scep(
                f"GetCertInitial IssuerAndSubject {description}",
                self.pki(content, message_type="20", transaction_id=seeds.issued_transaction),
            )
        description, content, transaction = self.pick(variants)
        return self.scep(description, self.pki(content, message_type="20", transaction_id=transaction))

    def m_scep_get_cert(self) -> Made:
        seeds = self.seeds
        serial = self.pick((seeds.issued_serial, 12345, -1, 0, 2**2000, -(2**159)))
        issuer = self.pick((seeds.ca_cert.subject, seeds.stranger[0].subject))
        content = issuer_and_serial(issuer, serial) if self.rng.random() < 0.8 else os.urandom(30)
        return self.scep(f"GetCert for serial {str(serial)[:30]}", self.pki(content, message_type="21"))

    def m_scep_renewal(self) -> Made:
        cert3, key3 = self.seeds.identity3
        variants: list[tuple[str, Callable[[], bytes]]] = [
            (
                "RenewalReq signed by otad's identity (a real renewal)",
                lambda: self.pki(self.csr(key=key3, challenge=None), message_type="17", signer=(cert3, key3)),
            ),
            ("PKCSReq signed by otad's identity, no challenge", lambda: self.pki(self.csr(key=key3, challenge=None), signer=(cert3, key3))),
            ("RenewalReq signed by a stranger", lambda: self.pki(self.csr(challenge=None), message_type="17", signer=self.seeds.stranger)),
            (
                "RenewalReq for another key than the signer's",
                lambda: self.pki(self.csr(challenge=None), message_type="17", signer=(cert3, key3)),
            ),
        ]
        description, make = self.pick(variants)
        return self.scep(description, make())

    def m_scep_signer(self) -> Made:
        signer = (self.seeds.scep_signer, self.seeds.scep_key)
        variants: list[tuple[str, dict[str, Any]]] = [
            ("no certificates", {"certificates": []}),
            ("only a stranger's certificate", {"certificates": [self.seeds.stranger[0]]}),
            ("the signer certificate 300 times", {"certificates": [signer[0]] * 300}),
            ("SHA-1", {"digest": "sha1"}),
            ("SHA-224", {"digest": "sha224"}),
            ("SHA-512", {"digest": "sha512"}),
            (
                "signed by the RSA-1024 stranger key",
                {"signer": (self_signed_identity("small", key=self.seeds.small_key)[0], self.seeds.small_key)},
            ),
        ]
        description, options = self.pick(variants)
        return self.scep(f"PKIMessage with {description}", self.pki(**options))

    # ------------------------------------------------------------ /scep query strings

    def scep_target(self, query: bytes) -> HTTPRequest:
        request = self.base() if self.endpoint == "/scep POST" else HTTPRequest(b"GET", b"", self.headers())
        return request.copy(target=b"/scep" + query)

    def m_query_operation(self) -> Made:
        operation = self.pick(
            (
                b"%ff",
                b"%fe%ff",
                b"%00",
                b"%c3%28",
                b"%e2%82",
                b"%ed%a0%80",
                b"%",
                b"%g1",
                b"%%",
                b"GetCACaps%00",
                b"getcacaps",
                b"GETCACAPS",
                b"GetCACaps%20",
                b"+GetCACaps",
                b"Get%43ACaps",
                b"",
                b"PKIOperation",
                b"GetNextCACert",
                b"GetCRL",
                b"A" * 10000,
                b"%41" * 3000,
                b"GetCACaps;x",
                b"\xc3\xa9",
                b"\xff",
                b"%2F..%2F",
                b"%0d%0aX:%20y",
                b"GetCACert%0b",
            )
        )
        return f"query operation={operation[:40]!r}", self.scep_target(b"?operation=" + operation), "normal"

    def m_query_structure(self) -> Made:
        query = self.pick(
            (
                b"",
                b"?",
                b"?&&&",
                b"?=",
                b"?operation",
                b"?operation=GetCACaps&operation=GetCACert",
                b"?OPERATION=GetCACaps",
                b"/?operation=GetCACaps",
                b"/x?operation=GetCACaps",
                b"?operation=GetCACaps#frag",
                b"?message=abc",
                b";params?operation=GetCACaps",
                b"?operation=GetCACert&message=" + b"A" * 12000,
                b"?op%65ration=GetCACaps",
                b"?operation%3DGetCACaps",
                b"?%ff=GetCACaps",
                b"?operation=GetCACaps&" + b"x=1&" * 3000,
                b"?" + b"%" * 5000,
            )
        )
        return f"query {query[:60]!r}{'...' if len(query) > 60 else ''} ({len(query)} bytes)", self.scep_target(query), "normal"

    def m_query_message(self) -> Made:
        valid = base64.b64encode(self.seeds.pkcs_req)
        message = self.pick(
            (
                ("12 KB of random base64", base64.b64encode(os.urandom(9000))),
                ("!!!!", b"!!!!"),
                ("%ff%fe", b"%ff%fe"),
                ("one character", b"A"),
                ("AB=CD", b"AB=CD"),
                ("====", b"===="),
                ("4097 A and =", b"A" * 4097 + b"="),
                ("with %0A line breaks", valid[:60] + b"%0A" + valid[60:]),
                ("with an unescaped +", valid),
                ("escaped", quote_from_bytes(valid, safe="").encode()),
                ("URL-safe alphabet", base64.urlsafe_b64encode(self.seeds.pkcs_req)),
                ("no padding", valid.rstrip(b"=")),
                ("double-escaped", quote(quote(valid.decode(), safe=""), safe="").encode()),
                ("empty", b""),
                ("%00", b"%00"),
                ("with spaces", valid[:40] + b"%20%20" + valid[40:]),
                ("16 KB", b"A" * 16384),
            )
        )
        description, value = message
        twice = self.rng.random() < 0.1
        query = b"?operation=PKIOperation&message=" + value + (b"&message=AAAA" if twice else b"")
        return f"PKIOperation message= {description}{' (and a second message=)' if twice else ''}", self.scep_target(query), "normal"

    # ------------------------------------------------------------ Authorization (/enroll)

    def m_auth_header(self) -> Made:
        user, password = self.seeds.user, self.seeds.password
        good = self.seeds.auth_header.split(b" ", 1)[1]

        def basic(text: bytes) -> bytes:
            return b"Basic " + base64.b64encode(text)

        variants: list[tuple[str, bytes | None]] = [
            ("no Authorization", None),
            ("'Basic'", b"Basic"),
            ("'Basic '", b"Basic "),
            ("no colon", basic(user.encode())),
            ("':'", basic(b":")),
            ("empty password", basic(user.encode() + b":")),
            ("empty user", basic(b":" + password.encode())),
            ("wrong password", basic(user.encode() + b":wrong")),
            ("apple with a wrong password (bcrypt 12)", basic(b"apple:wrong")),
            ("an unknown user (bcrypt 12)", basic(b"nobody:" + password.encode())),
            ("password + x", basic(f"{user}:{password}x".encode())),
            ("password + 100 A", basic(f"{user}:{password}".encode() + b"A" * 100)),
            ("NUL in the user", basic(user.encode() + b"\x00:" + password.encode())),
            ("non-UTF-8 credentials", basic(b"\xff\xfe:\xff")),
            ("user:password:extra", basic(f"{user}:{password}:extra".encode())),
            ("a 10000-byte user", basic(b"u" * 10000 + b":" + password.encode())),
            ("a 20000-byte user", basic(b"u" * 20000 + b":x")),
            ("lower-case scheme", b"basic " + good),
            ("upper-case scheme", b"BASIC " + good),
            ("two spaces", b"Basic  " + good),
            ("trailing spaces", b"Basic " + good + b"   "),
            ("a tab", b"Basic\t" + good),
            ("no padding", b"Basic " + good.rstrip(b"=")),
            ("extra padding", b"Basic " + good + b"==="),
            ("a '*' in the base64", b"Basic " + good[:4] + b"*" + good[4:]),
            ("percent-encoded", b"Basic %" + good),
            ("Digest", b'Digest username="fuzz", realm="otad", nonce="x", uri="/enroll", response="0"'),
            ("Bearer", b"Bearer abc.def.ghi"),
            ("Negotiate", b"Negotiate YII="),
            ("\\x0b before the token", b"Basic\x0b" + good),
            ("\\x1c in the token", b"Basic " + good + b"\x1c"),
            ("control characters in the user", basic(b"fu\x1bzz\x0b:" + password.encode())),
            ("a UTF-8 user", basic("j\u00fcrgen:pw".encode())),
            ("a latin-1 user", basic("j\u00fcrgen:pw".encode("latin-1"))),
            ("the base64 of 12 KB of NULs", basic(b"\x00" * 12000)),
        ]
        description, value = self.pick(variants)
        request = HTTPRequest(b"GET", b"/enroll", self.headers())
        if value is not None:
            request.headers.append((b"Authorization", value))
        if self.rng.random() < 0.07:
            request.headers.insert(0, (b"Authorization", basic(b"nobody:x")))
            description += ", after a first wrong Authorization header"
        return f"Authorization: {description}", request, "normal"

    def m_auth_method(self) -> Made:
        method = self.pick((b"POST", b"HEAD", b"PUT", b"OPTIONS", b"DELETE"))
        request = self.base().copy(method=method, body=b"x=1" if method in (b"POST", b"PUT") else b"")
        return f"{method.decode()} /enroll with good credentials", request, "normal"

    # ------------------------------------------------------------ headers

    def m_headers_content_type(self) -> Made:
        value = self.pick(
            (
                b"a\x0bb",
                PKCS7_SIGNATURE + b"\x0b",
                b"\x1c",
                b"text/plain\x1e",
                PKCS7_SIGNATURE + b"\x1c",
                b"\x1e",
                b"\x0c",
                b"\x1d",
                b"\x1f",
                b"\x85",
                b"\x7f",
                b"\xff\xfe",
                b"",
                b";",
                PKCS7_SIGNATURE + b"; charset=\xff",
                b'multipart/form-data; boundary="',
                b"multipart/form-data; boundary=x",
                b"application/x-www-form-urlencoded",
                b"A" * 8000,
                PKCS7_SIGNATURE + b";" * 4000,
                b"\x00",
                b"text/plain; a=\x0bb",
            )
        )
        request = self.base()
        if request.method == b"GET" and self.rng.random() < 0.5:
            request = request.copy(method=b"POST", body=b"x=1&y=2")
        request.set(b"Content-Type", value)
        return f"Content-Type: {value[:40]!r} ({len(value)} bytes)", request, "normal"

    def m_headers_control_bytes(self) -> Made:
        name = self.pick(
            (b"X-Fuzz", b"Content-Type", b"Host", b"User-Agent", b"Accept", b"Cookie", b"Authorization", b"Content-Disposition")
        )
        byte = self.pick(HEADER_BYTES)
        request = self.base()
        current = request.header(name) or b"value"
        where = self.pick(("value", "value", "name"))
        if where == "value":
            position = self.rng.randrange(len(current) + 1)
            request.set(name, current[:position] + byte + current[position:])
        else:
            request.headers.append((name[:2] + byte + name[2:], b"x"))
        return f"{byte!r} in the {where} of {name.decode()}", request, "normal"

    def m_headers_host(self) -> Made:
        value = self.pick(
            (
                None,
                b"",
                b"evil.example",
                b"localhost:99999",
                b"[::1]:x",
                b"a" * 300,
                b"localhost\x0b",
                b"localhost, other",
                self.seeds.host + b"/../",
                b"-bad",
                b"ex ample",
                b"localhost:",
                b"[::ffff:127.0.0.1]",
                b"localhost\xff",
                b"\xe2\x98\x83",
            )
        )
        request = self.base().drop(b"host")
        if value is not None:
            request.headers.insert(0, (b"Host", value))
        if self.rng.random() < 0.15:
            request.headers.append((b"Host", b"second.example"))
            return f"two Host headers ({value!r} and second.example)", request, "normal"
        return f"Host: {value!r}" if value is not None else "no Host header", request, "normal"

    def m_headers_many(self) -> Made:
        variant = self.pick(
            ("501 headers", "400 headers of 45 bytes (over 16 KB in all)", "100 Content-Type headers", "200 Cookie headers")
        )
        request = self.base()
        if variant == "501 headers":
            request.headers += [(f"X-H{i}".encode(), b"v") for i in range(501)]
        elif variant.startswith("400"):
            request.headers += [(f"X-H{i:04d}".encode(), b"v" * 36) for i in range(400)]
        elif variant.startswith("100"):
            request.headers += [(b"Content-Type", PKCS7_SIGNATURE)] * 100
        else:
            request.headers += [(b"Cookie", f"c{i}=v".encode()) for i in range(200)]
        return variant, request, "normal"

    def m_headers_overlong(self) -> Made:
        size = self.pick((16300, 16385, 20000, 70000))
        request = self.base()
        request.headers.append((b"X-Big", b"a" * size))
        return f"one header line of {size} bytes", request, "normal"

    def m_headers_malformed(self) -> Made:
        line = self.pick(
            (
                b"NoColon",
                b"Name : value",
                b": empty-name",
                b"Na me: v",
                b"X(y): v",
                b"\xff: v",
                b"Content-Length : 0",
                b" leading-space: v",
                b"X-A:\tv",
                b"X-A:",
                b"X-A: v\x0bw",
                b":",
            )
        )
        request = self.base()
        raw = request.encode()
        head, _, body = raw.partition(b"\r\n\r\n")
        return f"header line {line!r}", head + b"\r\n" + line + b"\r\n\r\n" + body, "normal"

    def m_headers_folded(self) -> Made:
        request = self.base()
        head, _, body = request.encode().partition(b"\r\n\r\n")
        variant = self.pick(("an obs-fold continuation", "a folded Content-Length", "a continuation right after the request line"))
        if variant == "an obs-fold continuation":
            head += b"\r\nX-A: a\r\n b\r\n\tc"
        elif variant == "a folded Content-Length":
            head = (
                head.replace(b"Content-Length: ", b"Content-Length: 1\r\n ", 1)
                if b"Content-Length" in head
                else head + b"\r\nContent-Length: 0\r\n 0"
            )
        else:
            first, _, rest = head.partition(b"\r\n")
            head = first + b"\r\n continued\r\n" + rest
        return variant, head + b"\r\n\r\n" + body, "normal"

    def m_headers_misc(self) -> Made:
        name, value = self.pick(
            (
                (b"Connection", b"close"),
                (b"Connection", b"Upgrade, HTTP2-Settings"),
                (b"Upgrade", b"websocket"),
                (b"Upgrade", b"h2c"),
                (b"Accept-Encoding", b"gzip, deflate, br"),
                (b"Range", b"bytes=0-10,5-1"),
                (b"Cookie", b"TWISTED_SESSION=" + b"a" * 64),
                (b"If-Modified-Since", b"garbage"),
                (b"X-Forwarded-For", b"1.2.3.4, evil"),
                (b"Content-Encoding", b"gzip"),
                (b"Transfer-Encoding", b"identity"),
                (b"Connection", b"keep-alive, " * 200),
            )
        )
        request = self.base()
        request.headers.append((name, value))
        if name == b"Upgrade":
            request.set(b"Connection", b"Upgrade")
        return f"{name.decode()}: {value[:40]!r}", request, "normal"

    # ------------------------------------------------------------ request target and method

    def m_target_path(self) -> Made:
        path = self.endpoint.encode() if self.endpoint in ("/", "/CA", "/enroll") else b"/"
        suffix = self.pick(
            (
                b"/",
                b"//",
                b"/.",
                b"/..",
                b"?",
                b"?x=%ff",
                b"%00",
                b"%ff",
                b";x",
                b"#x",
                b"/../CA",
                b"/%2e%2e/CA",
                b"/%252e",
                b"\\",
                b"A" * 16500,
                b"A" * 16200,
                b"%",
                b"%zz",
                b"\xff",
                b"/\x0b",
                b"?" + b"&" * 5000,
            )
        )
        target = self.pick(
            (
                path + suffix,
                path.lower() + suffix,
                path.upper(),
                b"https://" + self.seeds.host + path,
                b"*",
                path.lstrip(b"/") or b"x",
                b"",
                b"//" + self.seeds.host + path,
            )
        )
        request = self.base().copy(target=target)
        return f"request target {target[:60]!r}{'...' if len(target) > 60 else ''} ({len(target)} bytes)", request, "normal"

    def m_target_method(self) -> Made:
        method = self.pick(
            (
                b"POST",
                b"PUT",
                b"DELETE",
                b"HEAD",
                b"OPTIONS",
                b"TRACE",
                b"CONNECT",
                b"PATCH",
                b"get",
                b"G\x00ET",
                b"GET\x0b",
                b"A" * 100,
                b"BREW",
                b"\xff",
                b"PRI",
            )
        )
        request = self.base().copy(method=method)
        if method in (b"POST", b"PUT", b"PATCH"):
            request.body = request.body or b"x=1"
        return f"method {method[:20]!r}", request, "normal"

    def m_target_version(self) -> Made:
        version = self.pick(
            (
                b"HTTP/1.0",
                b"HTTP/2.0",
                b"HTTP/9.9",
                b"HTTP/1.1 x",
                b"http/1.1",
                b"HTTP/1.10",
                b"HTTP/01.1",
                b"",
                b"HTTP/1.1\x0b",
                b"HTTP/1",
                b"HTTP/0.9",
                b"HTTP/1.1\x00",
            )
        )
        return f"protocol version {version!r}", self.base().copy(version=version), "normal"

    # ------------------------------------------------------------ framing

    def framed(self) -> HTTPRequest:
        """The base request, with a body even for GET endpoints (a POST to the same path) when framing needs one."""
        request = self.base()
        if not request.body:
            request = request.copy(method=b"POST", body=b"x" * self.pick((1, 100, 2000)))
        return request

    def m_framing_bare_lf(self) -> Made:
        request = self.base() if self.rng.random() < 0.5 else self.framed()
        return "bare LF line endings", request.encode(eol=b"\n"), "normal"

    def m_framing_mixed_line_endings(self) -> Made:
        request = self.base() if self.rng.random() < 0.5 else self.framed()
        lines = request.lines()
        endings = [self.pick((b"\r\n", b"\n", b"\r", b"\n\r")) for _ in lines] + [self.pick((b"\r\n", b"\n"))]
        data = b"".join(line + ending for line, ending in zip(lines, endings, strict=False)) + endings[-1] + request.body
        return f"mixed line endings {[e.decode('latin-1').encode('unicode_escape').decode() for e in endings]}", data, "normal"

    def m_framing_no_length(self) -> Made:
        request = self.framed()
        return (
            f"{request.method.decode()} with a {len(request.body)}-byte body and no Content-Length",
            request.encode(auto_length=False),
            "normal",
        )

    def m_framing_length_larger(self) -> Made:
        request = self.framed()
        extra = self.pick((1, 100, 10000))
        request.set(b"Content-Length", str(len(request.body) + extra).encode())
        return f"Content-Length {extra} larger than the {len(request.body)}-byte body sent", request, "normal"

    def m_framing_length_huge(self) -> Made:
        request = self.framed()
        length = self.pick((65537, 100000, 10**7, 10**12, 10**30, 2**64))
        sent = request.body[: self.pick((0, 1000))]
        request = request.copy(body=sent).set(b"Content-Length", str(length).encode())
        return f"Content-Length: {length} (over the 64 KiB cap), {len(sent)} body bytes sent", request, "normal"

    def m_framing_length_smaller(self) -> Made:
        request = self.framed()
        short = max(0, len(request.body) - self.pick((1, 10, len(request.body))))
        request.set(b"Content-Length", str(short).encode())
        return f"Content-Length {short} for a {len(request.body)}-byte body (the rest looks like a next request)", request, "normal"

    def m_framing_length_bad(self) -> Made:
        request = self.framed()
        size = str(len(request.body)).encode()
        value = self.pick(
            (
                b"-1",
                b"+" + size,
                b"0x10",
                b"1e3",
                b" " + size,
                size + b" " + size,
                b"",
                b"abc",
                "\u0661\u0662".encode(),
                b"0" * 30 + size,
                size + b"\x0b",
                size + b"," + size,
                size + b".0",
                b"-" + size,
            )
        )
        request.set(b"Content-Length", value)
        return f"Content-Length: {value!r}", request, "normal"

    def m_framing_length_duplicate(self) -> Made:
        request = self.framed()
        size = str(len(request.body)).encode()
        variant = self.pick(("same", "different", "list"))
        if variant == "same":
            request.headers += [(b"Content-Length", size), (b"Content-Length", size)]
        elif variant == "different":
            request.headers += [(b"Content-Length", size), (b"Content-Length", b"1")]
        else:
            request.headers.append((b"Content-Length", size + b", " + size))
        return f"Content-Length given twice ({variant})", request, "normal"

    def m_framing_chunked(self) -> Made:
        request = self.framed()
        body = request.body
        request = request.copy(body=b"").set(b"Transfer-Encoding", b"chunked")
        half = len(body) // 2

        def chunk(data: bytes, size: bytes | None = None) -> bytes:
            return (size if size is not None else f"{len(data):x}".encode()) + b"\r\n" + data + b"\r\n"

        proper = chunk(body[:half]) + chunk(body[half:]) + b"0\r\n\r\n"
        variants: list[tuple[str, bytes, bytes | None]] = [
            ("proper", proper, None),
            ("upper-case hex sizes", proper.upper() if body.isascii() else proper, None),
            ("a chunk extension", f"{len(body):x};name=value\r\n".encode() + body + b"\r\n0\r\n\r\n", None),
            ("a non-hex size", b"zz\r\n" + body + b"\r\n0\r\n\r\n", None),
            ("a negative size", b"-1\r\n" + body + b"\r\n0\r\n\r\n", None),
            ("a 0x-prefixed size", b"0x10\r\n" + body[:16] + b"\r\n0\r\n\r\n", None),
            ("a 20-digit size", b"ffffffffffffffffffff\r\n" + body, None),
            ("a size larger than the data", chunk(body, f"{len(body) + 50:x}".encode()), None),
            ("no last chunk", chunk(body), None),
            ("trailers", chunk(body) + b"0\r\nX-Trailer: 1\r\n\r\n", None),
            ("no CRLF after the data", f"{len(body):x}".encode() + b"\r\n" + body + b"0\r\n\r\n", None),
            ("Content-Length as well", proper, b"content-length"),
            ("'chunked, chunked'", proper, b"chunked, chunked"),
            ("'gzip, chunked'", proper, b"gzip, chunked"),
            ("'Chunked'", proper, b"Chunked"),
            ("'chunked\\x0b'", proper, b"chunked\x0b"),
            ("over 64 KiB in chunks", chunk(b"a" * 40000) + chunk(b"a" * 40000) + b"0\r\n\r\n", None),
            ("10000 one-byte chunks", b"1\r\na\r\n" * 10000 + b"0\r\n\r\n", None),
            ("a 20000-character size line", b"0" * 19999 + b"1\r\na\r\n0\r\n\r\n", None),
        ]
        description, data, header = self.pick(variants)
        if header == b"content-length":
            request.headers.append((b"Content-Length", str(len(body)).encode()))
        elif header is not None:
            request.set(b"Transfer-Encoding", header)
        return f"Transfer-Encoding chunked: {description}", request.encode() + data, "normal"

    def m_framing_expect(self) -> Made:
        request = self.framed()
        variant = self.pick(
            (
                "100-continue and no body",
                "100-continue and no body",
                "100-continue and the body",
                "100-continue on HTTP/1.0, no body",
                "200-ok",
                "100-continue, foo",
            )
        )
        value = b"100-continue" if variant.startswith("100-continue ") or variant.startswith("100-continue on") else variant.encode()
        request.set(b"Expect", value).set(b"Content-Length", str(len(request.body)).encode())
        if "HTTP/1.0" in variant:
            request.version = b"HTTP/1.0"
        data = request.encode() if "and the body" in variant or not variant.startswith("100") else request.copy(body=b"").encode()
        return f"Expect: {variant}", data, "normal"

    def m_framing_request_line(self) -> Made:
        request = self.base()
        first, _, rest = request.encode().partition(b"\r\n")
        target = request.target
        line = self.pick(
            (
                b"\r\n" + first,
                b"\r\n\r\n" + first,
                request.method,
                request.method + b" " + target,
                request.method + b"  " + target + b"  HTTP/1.1",
                request.method + b"\t" + target + b"\tHTTP/1.1",
                first + b" ",
                first.replace(b" ", b"\x0b", 1),
                request.method + b" " + target + b"\x00 HTTP/1.1",
            )
        )
        return f"request line {line[:60]!r}", line + b"\r\n" + rest, "normal"

    def m_framing_pipelined(self) -> Made:
        request = self.base()
        variant = self.pick(("twice", "followed by garbage", "followed by a TLS record", "100 times"))
        data = request.encode()
        if variant == "twice":
            data *= 2
        elif variant == "followed by garbage":
            data += os.urandom(200)
        elif variant == "followed by a TLS record":
            data += b"\x16\x03\x01\x02\x00" + os.urandom(512)
        else:
            data *= 100
        return f"pipelined: the request {variant}", data, "normal"

    def slow(self, first: bytes, lines: Callable[[int], bytes]) -> list[tuple[float, bytes]]:
        steps = max(1, math.ceil(self.slow_seconds / self.slow_interval))
        return [(0.0, first)] + [(self.slow_interval, lines(step)) for step in range(steps)]

    def m_framing_slow_headers(self) -> Made:
        request = self.base()
        head = request.encode().partition(b"\r\n\r\n")[0] + b"\r\n"
        chunks = self.slow(head, lambda step: f"X-Slow-{step}: x\r\n".encode())
        return (
            f"slow sender: one more header line every {self.slow_interval:g} s for {self.slow_seconds:g} s, never finishing",
            chunks,
            "slow",
        )

    def m_framing_slow_body(self) -> Made:
        request = self.framed()
        request.set(b"Content-Length", str(max(len(request.body), 10000)).encode())
        head = request.copy(body=b"").encode()
        chunks = self.slow(head, lambda step: request.body[step : step + 1] or b"x")
        return f"slow sender: one body byte every {self.slow_interval:g} s for {self.slow_seconds:g} s", chunks, "slow"

    def m_framing_slow_request_line(self) -> Made:
        line = self.base().lines()[0]
        chunks = self.slow(line[:1], lambda step: line[step + 1 : step + 2] or b"x")
        return f"slow sender: the request line one byte every {self.slow_interval:g} s", chunks, "slow"

    def m_framing_abort(self) -> Made:
        request = self.base()
        data = request.encode()
        cut = self.pick((len(data), len(data), self.rng.randrange(1, max(2, len(data)))))
        return f"sends {cut} of {len(data)} bytes and hangs up at once", data[:cut], "abort"


# ======================================================================== the daemon's output

_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<function>.+)$')
_SYSTEM_CLIENT = re.compile(r",\d+,(127\.\d+\.\d+\.\d+)\]?$")
# How otad's request log spells a path (otad/web.py OtadSite.log).
_SAFE_PATH = re.compile(r"[^\x21-\x7e]")


@dataclass
class LoggedTraceback:
    """One traceback (or "Unhandled Error") block from the daemon's log."""

    header: str
    lines: list[str]
    client: str | None = None
    # The endpoint being fuzzed when it was logged (or the endpoint of the input it is tied to).
    endpoint: str | None = None

    @property
    def frames(self) -> list[tuple[str, int, str]]:
        found = []
        for line in self.lines:
            match = _FRAME.match(line)
            if match:
                found.append((match.group("file"), int(match.group("line")), match.group("function")))
        return found

    @property
    def exception(self) -> str:
        """The exception line, e.g. ``builtins.AttributeError: 'NoneType' object has no attribute 'groupdict'``."""
        last_frame = max((index for index, line in enumerate(self.lines) if _FRAME.match(line)), default=-1)
        for line in self.lines[last_frame + 1 :]:
            if line.strip() and not line.startswith("    "):
                return line.strip()
        return self.header.strip()

    @staticmethod
    def _short(path: str) -> str:
        for marker in ("/site-packages/", "/lib/python3."):
            if marker in path:
                tail = path.split(marker, 1)[1]
                return tail.split("/", 1)[1] if marker == "/lib/python3." else tail
        for marker in ("/otad/", "/tests/", "/twisted/"):
            if marker in path:
                return marker[1:] + path.rsplit(marker, 1)[1]
        return path.replace(str(ROOT) + "/", "")

    @property
    def raiser(self) -> str:
        """The innermost frame: the function that raised."""
        frames = self.frames
        if not frames:
            return "?"
        file, line, function = frames[-1]
        return f"{self._short(file)}:{line} {function}"

    @property
    def project_frame(self) -> str:
        """The innermost frame in otad or Twisted: who let the exception escape."""
        for file, line, function in reversed(self.frames):
            short = self._short(file)
            if short.startswith(("otad/", "twisted/")):
                return f"{short}:{line} {function}"
        return "?"

    @property
    def exception_type(self) -> str:
        return self.exception.split(":", 1)[0]

    @property
    def cause(self) -> str:
        """What groups tracebacks: the exception type, the raising function and the innermost otad/Twisted function (no line numbers)."""

        def where(frame: str) -> str:
            return f"{frame.split(':')[0]} {frame.split(' ')[-1]}" if frame != "?" else "?"

        raiser, project = where(self.raiser), where(self.project_frame)
        return f"{self.exception_type} raised in {raiser}" + (f" (via {project})" if project != raiser else "")

    def text(self) -> str:
        return "\n".join([self.header, *self.lines])


def parse_tracebacks(output: str) -> list[LoggedTraceback]:
    """The traceback blocks in twistd's text log: a log line, then tab-indented lines holding a traceback."""
    lines = output.split("\n")
    found = []
    index = 0
    while index < len(lines):
        line = lines[index]
        block = []
        following = index + 1
        while following < len(lines) and lines[following].startswith("\t"):
            block.append(lines[following][1:])
            following += 1
        if "Unhandled Error" in line or any(entry.startswith("Traceback (most recent call last)") for entry in block):
            found.append(LoggedTraceback(line, block))
        index = following
    return found


def json_failures(text: str) -> list[str | None]:
    """For each event with a failure in the daemon's JSON log, the client address it concerns (None if unknown).

    A channel's "Unhandled Error" names the client in its log system; otad's "unexpected error" events are
    followed at once by the request's own log event, which names the client.
    """
    events = []
    for line in text.split("\n"):
        if line.strip():
            try:
                events.append(json.loads(line))
            except ValueError:
                events.append({})
    clients: list[str | None] = []
    for index, event in enumerate(events):
        if "traceback" not in event:
            continue
        match = _SYSTEM_CLIENT.search(str(event.get("system") or ""))
        client = match.group(1) if match else None
        if client is None and index + 1 < len(events) and str(event.get("message", "")).startswith("unexpected error"):
            following = events[index + 1]
            same_path = _SAFE_PATH.sub("?", str(event.get("path", "")))[:200] == following.get("path")
            if following.get("logger") == "otad.web" and same_path and int(following.get("status") or 0) >= 500:
                client = following.get("client")
        clients.append(client)
    return clients


# ======================================================================== running


@dataclass
class FuzzOptions:
    per_endpoint: int = 2000
    seed: int = 1
    concurrency: int = 16
    timeout: float = 5.0
    slow_seconds: float = 30.0
    slow_interval: float = 4.0
    data_dir: Path | None = None
    endpoints: tuple[str, ...] = ENDPOINTS
    # Replay each distinct failure's smallest input alone to confirm it and find its traceback.
    replay: bool = True
    # Phase-1 challenges fetched up front, so that some phase-2 mutations get past the challenge check.
    fresh_challenges: int = 0
    progress: Callable[[str], None] | None = None

    def challenges(self) -> int:
        return self.fresh_challenges or max(10, self.per_endpoint // 8)


@dataclass
class EndpointResult:
    endpoint: str
    inputs: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    five_xx: int = 0
    closed: int = 0
    unanswered: int = 0
    tracebacks: int = 0
    rss_before_kb: int = 0
    rss_after_kb: int = 0
    seconds: float = 0.0


@dataclass
class Finding:
    """One distinct failure: its cause, every case that showed it and the smallest of them."""

    cause: str
    kind: str
    cases: list[tuple[Case, Outcome]] = field(default_factory=list)
    tracebacks: list[LoggedTraceback] = field(default_factory=list)
    replay_note: str = ""
    # The reproducer with every header line it does not need removed (when replaying showed that).
    minimal: Case | None = None
    file: Path | None = None

    @property
    def reproducer(self) -> tuple[Case, Outcome]:
        return min(self.cases, key=lambda pair: (pair[0].mode != "normal", pair[0].size, pair[0].index))

    @property
    def endpoints(self) -> list[str]:
        return sorted({case.endpoint for case, _ in self.cases}, key=lambda name: ENDPOINTS.index(name) if name in ENDPOINTS else 99)


def vmrss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def show_bytes(data: bytes, limit: int = 600) -> str:
    """``data`` as a Python bytes literal, the middle elided when it is long."""
    if len(data) <= limit:
        return repr(data)
    half = limit // 2
    return f"{data[:half]!r} ... [{len(data) - limit} bytes elided] ... {data[-half // 2 :]!r}"


class Runner:
    """Runs the cases endpoint by endpoint against a started daemon (blocking: call it from a thread)."""

    def __init__(self, daemon: Daemon, seeds: Seeds, options: FuzzOptions, events: Path) -> None:
        self.daemon = daemon
        self.seeds = seeds
        self.options = options
        self.events = events
        self.client = RawClient(daemon.port, seeds.ca_file, options.timeout, options.slow_seconds)
        self.results: list[EndpointResult] = []
        self.unowned_tracebacks = 0
        self.daemon_note = ""
        self.probes: list[tuple[Case, Outcome]] = []
        self.tracebacks: list[LoggedTraceback] = []
        self.by_source: dict[str, tuple[Case, Outcome]] = {}
        self._log_offset = len(daemon.output)
        self._events_offset = 0
        self.attribution_note = ""

    @property
    def pid(self) -> int:
        transport = self.daemon.transport
        return int(getattr(transport, "pid", 0) or 0)

    def say(self, text: str) -> None:
        if self.options.progress is not None:
            self.options.progress(text)

    def quiesce(self, seconds: float = 0.25, limit: float = 5.0) -> None:
        """Wait until the daemon's output has stopped growing (its log may lag the responses)."""
        deadline = time.monotonic() + limit
        size = -1
        while time.monotonic() < deadline:
            current = (len(self.daemon.output), self.events.stat().st_size if self.events.exists() else 0)
            if current == size:
                return
            size = current  # type: ignore[assignment]
            time.sleep(seconds)

    def new_tracebacks(self) -> list[LoggedTraceback]:
        """Tracebacks logged since the last call, each with the client address it concerns where the JSON log says."""
        self.quiesce()
        output = self.daemon.output
        text = output[self._log_offset :].decode("utf-8", "replace")
        self._log_offset = len(output)
        found = parse_tracebacks(text)
        with open(self.events, "rb") as events:
            events.seek(self._events_offset)
            data = events.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._events_offset += len(complete)
        clients = json_failures(complete.decode("utf-8", "replace"))
        if len(clients) == len(found):
            for traceback, client in zip(found, clients, strict=True):
                traceback.client = client
        elif found:
            self.attribution_note = (
                f"{len(found)} tracebacks but {len(clients)} failure events in the JSON log: some are not tied to inputs"
            )
        return found

    def daemon_gone(self) -> str:
        """Why the daemon is no longer running ('' while it is)."""
        status = Path(f"/proc/{self.pid}/status")
        alive = status.exists() and "\nState:\tZ" not in status.read_text()
        if alive and not self.daemon.exited().called:
            return ""
        reason = re.findall(r"\] (Received SIG\w+|.*cannot start.*)", self.daemon.output.decode("utf-8", "replace"))
        return f"the daemon exited (code {self.daemon.exit_code}){': ' + reason[-1] if reason else ''}"

    def run(self) -> tuple[list[EndpointResult], list[Finding]]:
        """Each endpoint in turn with --concurrency threads; slow senders go to a background pool as they come up."""
        options = self.options
        # Anything logged while the seeds were made counts too (tied to no input).
        self.tracebacks += self.new_tracebacks()
        # Every endpoint's inputs are made first, so that all the slow senders (which take --slow-seconds each
        # whatever the daemon does) start at once in the background and overlap the whole run.
        planned: dict[str, list[Case]] = {}
        for endpoint in options.endpoints:
            rng = random.Random(f"{options.seed}:{endpoint}")
            planned[endpoint] = Mutator(self.seeds, endpoint, rng, options.slow_seconds, options.slow_interval).cases(options.per_endpoint)
            self.results.append(EndpointResult(endpoint))
        slow_cases = [case for cases in planned.values() for case in cases if case.mode == "slow"]
        background = ThreadPoolExecutor(max(1, min(256, len(slow_cases))), thread_name_prefix="fuzz-slow")
        slow = [(case, background.submit(self.client.send, case)) for case in slow_cases]
        self.say(f"{len(slow_cases)} slow senders started in the background")
        for endpoint in options.endpoints:
            if self.daemon_gone():
                break
            cases = planned.pop(endpoint)
            result = self.result(endpoint)
            result.rss_before_kb = vmrss_kb(self.pid)
            started = time.monotonic()
            normal = [case for case in cases if case.mode != "slow"]
            self.say(f"{endpoint}: {len(normal)} inputs (and {len(cases) - len(normal)} slow senders), concurrency {options.concurrency}")
            with ThreadPoolExecutor(options.concurrency, thread_name_prefix="fuzz") as pool:
                for case, outcome in zip(normal, pool.map(self.client.send, normal), strict=True):
                    self.record(case, outcome)
            if endpoint == "/profile phase 3":
                self.probe_state()
            self.collect(endpoint)
            result.seconds = time.monotonic() - started
            result.rss_after_kb = vmrss_kb(self.pid)
            self.say(
                f"{endpoint}: done in {result.seconds:.0f} s: 5xx {result.five_xx}, closed {result.closed}, "
                f"unanswered {result.unanswered}, tracebacks so far {result.tracebacks}"
            )
        if slow:
            self.say(f"waiting for {sum(not future.done() for _, future in slow)} slow senders")
        for case, future in slow:
            self.record(case, future.result())
        background.shutdown()
        self.collect(None)
        self.daemon_note = self.daemon_gone()
        findings = self.findings()
        if options.replay and not self.daemon_note:
            self.confirm(findings)
        return self.results, findings

    def probe_state(self) -> None:
        """After the phase-3 inputs: a valid phase-3 request from each enrolled device (lasting damage shows here), then
        one small request as the second device carrying a 2^20-leaf shared-reference DAG, and a valid request after it."""
        seeds = self.seeds
        mutator = Mutator(seeds, "/profile phase 3", random.Random(0), self.options.slow_seconds, self.options.slow_interval)

        def signed(identity: tuple[x509.Certificate, rsa.RSAPrivateKey], content: bytes) -> bytes:
            cert, key = identity
            return mutator.wrap(sign_cms(content, cert, key, signed_attributes=(), certificates=[cert])).encode()

        plist = BinaryPlist()
        top = plist.reserve()
        leaf = plist.text("x")
        ref = plist.array([leaf, leaf])
        for _ in range(19):
            ref = plist.array([ref, ref])
        plist.strings_dict(_string_attributes(seeds.sink_attributes), [("DAG", ref)], at=top)
        dag = plist.build(top)
        valid_main = signed(seeds.identity3, plistlib.dumps(seeds.attributes3))
        valid_sink = signed(seeds.sink_identity, plistlib.dumps(seeds.sink_attributes))
        steps = [
            (
                "probe_phase3_first_device",
                "a valid phase-3 request from the first enrolled device, after all the phase-3 inputs",
                valid_main,
                None,
            ),
            (
                "probe_phase3_second_device",
                "a valid phase-3 request from the second device, after the state-growing inputs",
                valid_sink,
                None,
            ),
            (
                "probe_dag_amplification",
                f"the second device sends a {len(dag)}-byte binary plist whose DAG key holds 2^20 shared leaves",
                signed(seeds.sink_identity, dag),
                dag,
            ),
            ("probe_phase3_after_dag", "a valid phase-3 request from the second device, after its DAG request", valid_sink, None),
        ]
        for name, description, data, content in steps:
            case = Case("/profile phase 3", name, description, [(0.0, data)], content=content)
            outcome = self.client.send(case, patience=120.0)
            self.record(case, outcome)
            self.probes.append((case, outcome))
            self.say(f"state check: {description}: {outcome.summary()}")

    def result(self, endpoint: str) -> EndpointResult:
        return next(result for result in self.results if result.endpoint == endpoint)

    def record(self, case: Case, outcome: Outcome) -> None:
        result = self.result(case.endpoint)
        result.inputs += 1
        result.kinds[outcome.kind] += 1
        if outcome.status is not None:
            result.statuses[outcome.status] += 1
        failure = outcome.failure
        if failure == "5xx":
            result.five_xx += 1
        elif failure == "closed":
            result.closed += 1
        elif failure == "unanswered":
            result.unanswered += 1
        self.by_source[case.source] = (case, outcome)

    def collect(self, endpoint: str | None) -> None:
        """Read new tracebacks, count each for the endpoint of the input it is tied to (else the current one), and
        forget inputs that neither failed nor caused a traceback."""
        tracebacks = self.new_tracebacks()
        self.tracebacks += tracebacks
        for traceback in tracebacks:
            pair = self.by_source.get(traceback.client or "")
            owner = pair[0].endpoint if pair is not None else endpoint
            traceback.endpoint = owner
            if owner is not None:
                self.result(owner).tracebacks += 1
            else:
                self.unowned_tracebacks += 1
        traced = {traceback.client for traceback in self.tracebacks}
        for source, (_, outcome) in list(self.by_source.items()):
            # Inputs we hung up on stay: they are the suspects for tracebacks that name no client.
            if outcome.failure is None and source not in traced and outcome.kind != "aborted":
                del self.by_source[source]

    def findings(self) -> list[Finding]:
        """Group failures and tracebacks by cause: a traceback's raising function, or else what the daemon did."""
        groups: dict[str, Finding] = {}
        traced: dict[str, list[LoggedTraceback]] = {}
        for traceback in self.tracebacks:
            if traceback.client is not None:
                traced.setdefault(traceback.client, []).append(traceback)
        for traceback in self.tracebacks:
            pair = self.by_source.get(traceback.client or "")
            finding = groups.setdefault(traceback.cause, Finding(traceback.cause, "traceback"))
            finding.tracebacks.append(traceback)
            if pair is not None and pair not in finding.cases:
                finding.cases.append(pair)
        for case, outcome in self.by_source.values():
            failure = outcome.failure
            if failure is None or traced.get(case.source):
                continue
            if failure == "5xx":
                reason = outcome.reason
                cause = f"HTTP {outcome.status} without a traceback: {reason}"
            elif failure == "closed":
                cause = f"connection closed without a response, no traceback: {case.mutator} ({outcome.note or 'EOF'})"
            elif case.mutator.startswith("probe_"):
                cause = f"state check failed: {case.description}: {'no answer in time' if failure == 'unanswered' else failure}"
            else:
                cause = f"{'slow sender never cut off' if outcome.kind == 'held' else 'no response within the timeout'}: {case.mutator}"
            groups.setdefault(cause, Finding(cause, failure)).cases.append((case, outcome))
        found = sorted(groups.values(), key=lambda finding: (finding.kind != "traceback", -len(finding.cases), finding.cause))
        return found + self.degradation()

    def degradation(self) -> list[Finding]:
        """A finding (that does not fail the run) when the DAG state check made later valid requests much slower."""
        probes = {case.mutator: (case, outcome) for case, outcome in self.probes}
        try:
            _, before = probes["probe_phase3_second_device"]
            dag_case, dag_outcome = probes["probe_dag_amplification"]
            _, after = probes["probe_phase3_after_dag"]
        except KeyError:
            return []
        slow, fast = after.finished - after.started, before.finished - before.started
        if after.status is None or slow < max(0.5, 5 * fast):
            return []
        cause = (
            f"lasting slowdown: after one {dag_case.size}-byte phase-3 request whose binary plist holds a 2^20-leaf DAG, "
            f"every valid phase-3 request for that device takes {slow:.2f} s instead of {fast:.2f} s"
        )
        return [Finding(cause, "degradation", [(dag_case, dag_outcome)])]

    def replay(self, finding: Finding, case: Case) -> tuple[bool, Outcome, list[LoggedTraceback]]:
        """Send ``case`` alone; whether it fails the way ``finding`` says, its outcome and the tracebacks it caused."""
        outcome = self.client.send(case)
        # Alone on the daemon, a traceback that names no client is this input's too.
        tracebacks = [traceback for traceback in self.new_tracebacks() if traceback.client in (case.source, None)]
        if finding.kind == "traceback" or not finding.cases:
            return any(traceback.cause == finding.cause for traceback in tracebacks), outcome, tracebacks
        original = finding.reproducer[1]
        if finding.kind == "traceback":
            same = any(traceback.cause == finding.cause for traceback in tracebacks)
        elif finding.kind == "5xx":
            same = outcome.failure == "5xx" and outcome.reason == original.reason
        else:
            same = outcome.failure == original.failure
        return same, outcome, tracebacks

    def shrink(self, finding: Finding, case: Case) -> Case | None:
        """Drop header lines one at a time while the input still fails the same way (fast failures only)."""
        if finding.kind == "unanswered" or case.mode != "normal" or len(case.chunks) != 1:
            return None
        head, separator, body = case.data.partition(b"\r\n\r\n")
        if not separator:
            return None
        lines = head.split(b"\r\n")
        index, changed = 1, False
        while index < len(lines) and index < 40:
            trial = lines[:index] + lines[index + 1 :]
            candidate = dataclasses.replace(case, chunks=[(0.0, b"\r\n".join(trial) + separator + body)])
            if self.replay(finding, candidate)[0]:
                lines, changed = trial, True
            else:
                index += 1
        if not changed:
            return None
        return dataclasses.replace(case, chunks=[(0.0, b"\r\n".join(lines) + separator + body)])

    def find_culprit(self, finding: Finding) -> None:
        """For tracebacks that name no client: replay the inputs we hung up on, from the endpoints where they were logged.

        Whole requests first (a hang-up mid-request rarely gets as far), each up to three times: these are races."""
        endpoints = {traceback.endpoint for traceback in finding.tracebacks}
        suspects = sorted(
            (pair for pair in self.by_source.values() if pair[1].kind == "aborted" and pair[0].endpoint in endpoints),
            key=lambda pair: -pair[0].size,
        )[:8]
        for case, outcome in suspects:
            for attempt in range(1, 4):
                if self.replay(finding, dataclasses.replace(case, chunks=list(case.chunks)))[0]:
                    finding.cases.append((case, outcome))
                    finding.replay_note = (
                        f"the log names no client; replaying the inputs we hung up on, this one did it (on try {attempt}; it is a race)"
                    )
                    return
        finding.replay_note = f"the log names no client, and none of {len(suspects)} replayed aborted inputs did it in 3 tries each"

    def confirm(self, findings: list[Finding]) -> None:
        """Replay each finding's reproducer alone, say whether it fails the same way, and shrink it where that is quick."""
        for finding in findings:
            if self.daemon_gone():
                finding.replay_note = f"not replayed: {self.daemon_gone()}"
                continue
            if not finding.cases:
                self.find_culprit(finding)
                continue
            case, _ = finding.reproducer
            if case.mutator.startswith("probe_"):
                finding.replay_note = "not replayed alone: a state check depends on the inputs sent before it"
                continue
            same, outcome, tracebacks = self.replay(finding, dataclasses.replace(case, chunks=list(case.chunks)))
            verdict = "reproduced alone" if same else "NOT reproduced alone"
            finding.replay_note = f"{verdict}: {outcome.summary()}{f', {len(tracebacks)} traceback(s)' if tracebacks else ''}"
            if same:
                finding.minimal = self.shrink(finding, case)
            self.say(f"replayed [{finding.kind}] {finding.cause[:70]}: {verdict}")


@dataclass
class FuzzReport:
    options: FuzzOptions
    results: list[EndpointResult]
    findings: list[Finding]
    seed_checks: dict[str, str]
    data_dir: Path
    seconds: float
    attribution_note: str = ""
    # Tracebacks logged outside any endpoint's run (while the seeds were made) and why the daemon died, if it did.
    unowned_tracebacks: int = 0
    daemon_note: str = ""
    probes: list[tuple[Case, Outcome]] = field(default_factory=list)
    command: str = ""

    @property
    def five_xx(self) -> int:
        return sum(result.five_xx for result in self.results)

    @property
    def unanswered(self) -> int:
        return sum(result.unanswered + result.closed for result in self.results)

    @property
    def tracebacks(self) -> int:
        return sum(result.tracebacks for result in self.results) + self.unowned_tracebacks

    @property
    def failed(self) -> bool:
        return bool(self.five_xx or self.unanswered or self.tracebacks or self.daemon_note)

    def table(self) -> str:
        """One row per endpoint. Besides the statuses and the failures (5xx, closed without a response, no answer in
        time), ``aborted`` counts inputs the client broke off on purpose, which owe no answer, and ``cut-off`` slow
        senders whose connection otad closed at its deadline while they were still sending."""
        header = (
            f"{'endpoint':<17} {'inputs':>6} {'2xx':>5} {'3xx':>4} {'4xx':>5} {'5xx':>4} {'closed':>6} {'no-answer':>9} "
            f"{'aborted':>7} {'cut-off':>7} {'tracebacks':>10} {'RSS MiB before->after':>22} {'secs':>5}  status codes"
        )
        rows = [header, "-" * len(header)]
        total = EndpointResult("total")
        for result in self.results:
            rows.append(self._row(result))
            total.inputs += result.inputs
            total.statuses.update(result.statuses)
            total.kinds.update(result.kinds)
            total.five_xx += result.five_xx
            total.closed += result.closed
            total.unanswered += result.unanswered
            total.tracebacks += result.tracebacks
            total.seconds += result.seconds
        if self.results:
            total.rss_before_kb = self.results[0].rss_before_kb
            total.rss_after_kb = self.results[-1].rss_after_kb
        rows += ["-" * len(header), self._row(total)]
        return "\n".join(rows)

    @staticmethod
    def _row(result: EndpointResult) -> str:
        def band(low: int) -> int:
            return sum(count for code, count in result.statuses.items() if low <= code < low + 100)

        codes = " ".join(f"{code}:{count}" for code, count in sorted(result.statuses.items()))
        rss = f"{result.rss_before_kb / 1024:.1f}->{result.rss_after_kb / 1024:.1f}"
        return (
            f"{result.endpoint:<17} {result.inputs:>6} {band(200):>5} {band(300):>4} {band(400):>5} {result.five_xx:>4} {result.closed:>6} "
            f"{result.unanswered:>9} {result.kinds['aborted']:>7} {result.kinds['cut off']:>7} {result.tracebacks:>10} {rss:>22} "
            f"{result.seconds:>5.0f}  {codes}"
        )

    def findings_text(self, bytes_limit: int = 600) -> str:
        if not self.findings:
            return "no failures"
        parts = []
        for number, finding in enumerate(self.findings, 1):
            lines = [
                f"[{number}] {finding.cause}",
                f"    kind: {finding.kind}; {len(finding.cases)} input(s); endpoints: {', '.join(finding.endpoints) or '-'}",
            ]
            if finding.tracebacks:
                traceback = finding.tracebacks[0]
                lines.append(f"    exception: {traceback.exception[:300]}")
                lines.append(f"    raised in: {traceback.raiser}; escaped from: {traceback.project_frame}")
                lines.append(f"    logged {len(finding.tracebacks)} time(s), first as: {traceback.header.strip()[:160]}")
            if finding.cases:
                case, outcome = finding.reproducer
                lines.append(f"    reproducer: [{case.endpoint}] {case.mutator}: {case.description}")
                lines.append(f"    outcome: {outcome.summary()}")
                variants = Counter(f"[{other.endpoint}] {other.description}" for other, _ in finding.cases)
                if len(variants) > 1:
                    shown = "; ".join(f"{text[:110]} x{count}" for text, count in variants.most_common(5))
                    lines.append(f"    variants seen ({len(variants)} distinct, most common first): {shown}")
                if finding.replay_note:
                    lines.append(f"    replay: {finding.replay_note}")
                if case.mode == "slow":
                    lines.append(
                        f"    sent as {len(case.chunks)} pieces, {case.chunks[1][0] if len(case.chunks) > 1 else 0:g} s apart; first piece:"
                    )
                    lines.append(f"      {show_bytes(case.chunks[0][1], bytes_limit)}")
                elif finding.minimal is not None:
                    lines.append(
                        f"    bytes, minimised from {case.size} to {finding.minimal.size} by dropping header lines: "
                        f"{show_bytes(finding.minimal.data, bytes_limit)}"
                    )
                else:
                    lines.append(f"    bytes ({case.size}): {show_bytes(case.data, bytes_limit)}")
                if case.content is not None:
                    lines.append(f"    signed content ({len(case.content)} bytes): {show_bytes(case.content, bytes_limit)}")
                if finding.file is not None:
                    lines.append(f"    full input: {finding.file}")
            parts.append("\n".join(lines))
        return "\n\n".join(parts)

    def save_reproducers(self) -> None:
        folder = self.data_dir / "reproducers"
        folder.mkdir(exist_ok=True)
        for number, finding in enumerate(self.findings, 1):
            if not finding.cases:
                continue
            case, outcome = finding.reproducer
            slug = re.sub(r"[^a-z0-9]+", "-", case.mutator.lower()).strip("-")
            finding.file = folder / f"{number:02d}-{slug}.bin"
            finding.file.write_bytes((finding.minimal or case).data)
            notes = [
                finding.cause,
                f"[{case.endpoint}] {case.mutator}: {case.description}",
                f"outcome: {outcome.summary()}",
                f"pieces (pause seconds, length): {[(pause, len(data)) for pause, data in case.chunks][:20]}",
            ]
            notes += [traceback.text() for traceback in finding.tracebacks[:1]]
            if case.content is not None:
                finding.file.with_suffix(".content").write_bytes(case.content)
            finding.file.with_suffix(".txt").write_text("\n".join(notes) + "\n")


async def run_fuzz(reactor: Any, options: FuzzOptions) -> FuzzReport:
    """Start a daemon that trusts a fake Apple hierarchy, build seeds, fuzz every endpoint and stop the daemon."""
    started = time.monotonic()
    say = options.progress or (lambda text: None)
    data_dir = options.data_dir or Path(tempfile.mkdtemp(prefix="otad-fuzz-"))
    data_dir = data_dir.absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    if any(data_dir.iterdir()):
        raise ValueError(f"the data directory {data_dir} is not empty")
    say(f"data directory {data_dir}; building a fake Apple hierarchy")
    apple = await deferToThread(FakeAppleHierarchy.create)
    (data_dir / "anchors.pem").write_bytes(apple.anchors_pem())
    user, password = "fuzz", base64.urlsafe_b64encode(os.urandom(12)).decode()
    write_users_file(data_dir / "htpasswd", user, password)
    events = data_dir / "events.jsonl"
    (data_dir / "otad.conf").write_text(f"[server]\njson_log = {events}\n")
    daemon = Daemon(data_dir, ("--device-ca", str(data_dir / "anchors.pem"), "--config", str(data_dir / "otad.conf")))
    await daemon.start()
    try:
        say(f"daemon listening on 127.0.0.1:{daemon.port}; enrolling fake devices for the seeds")
        seeds = await build_seeds(reactor, daemon, apple, user, password, options.challenges())
        runner = Runner(daemon, seeds, options, events)
        results, findings = await deferToThread(runner.run)
    finally:
        await daemon.stop()
        (data_dir / "daemon.log").write_bytes(daemon.output)
    report = FuzzReport(
        options,
        results,
        findings,
        seeds.checks,
        data_dir,
        time.monotonic() - started,
        runner.attribution_note,
        runner.unowned_tracebacks,
        runner.daemon_note,
        runner.probes,
    )
    report.save_reproducers()
    return report
