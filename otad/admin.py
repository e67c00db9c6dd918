"""``otad-admin``: manage users, static SCEP challenges and certificates, inspect state and lint profiles.

It runs on the same config and data directory as the daemon and is safe to use while the daemon
is up: the users file is replaced atomically and the SQLite store is in WAL mode, where every
write takes the lock up front (BEGIN IMMEDIATE) and waits out the daemon's transactions.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import getpass
import json
import re
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from otad import cms, payloads, tokens, users
from otad import config as configuration
from otad.ca import serial_hex
from otad.store import CertificateRecord, Store, StoreError

# Exit status of `lint` when the profile has errors; 1 stays for usage and operational errors.
LINT_ERRORS = 2
MAX_STATIC_USES = 1_000_000


class AdminError(Exception):
    """A one-line message for stderr; the command exits 1."""


class _Parser(argparse.ArgumentParser):
    """Reports usage errors like every other error, one line and exit 1, so that exit 2 means lint errors."""

    def error(self, message: str) -> NoReturn:
        raise AdminError(f"{message} (see {self.prog} --help)")


def _settings(args: argparse.Namespace) -> configuration.Config:
    # The common options may come before or after the subcommand; absent ones are simply missing.
    return configuration.load(
        getattr(args, "config", None),
        {"data_dir": getattr(args, "data_dir", None), "htpasswd": getattr(args, "htpasswd", None)},
    )


def _read_password(args: argparse.Namespace) -> bytes:
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise AdminError("the passwords differ")
        return first.encode("utf-8")
    line = sys.stdin.buffer.readline()
    return line.rstrip(b"\r\n")


def user_add(args: argparse.Namespace) -> int:
    settings = _settings(args)
    try:
        users.set_password(settings.htpasswd, args.name.encode("utf-8"), _read_password(args))
    except users.UsersFileError as error:
        raise AdminError(str(error)) from None
    print(f"set the password of {args.name} in {settings.htpasswd}")
    return 0


def user_remove(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if not users.remove_user(settings.htpasswd, args.name.encode("utf-8")):
        raise AdminError(f"no user {args.name} in {settings.htpasswd}")
    print(f"removed {args.name} from {settings.htpasswd}")
    return 0


def user_list(args: argparse.Namespace) -> int:
    settings = _settings(args)
    try:
        names = sorted(users.parse(settings.htpasswd.read_bytes()))
    except FileNotFoundError:
        names = []
    decoded = [name.decode("utf-8", "replace") for name in names]
    print(json.dumps(decoded) if args.json else "\n".join(decoded))
    return 0


@contextlib.contextmanager
def _open_store(args: argparse.Namespace) -> Iterator[Store]:
    settings = _settings(args)
    # Opening would create an empty database: a mistyped --data-dir must not look like "no data".
    if not settings.database.exists():
        raise AdminError(f"no state database at {settings.database}; has otad been started with this --data-dir?")
    try:
        store = Store(settings.database)
    except StoreError as error:
        raise AdminError(str(error)) from None
    try:
        yield store
    except sqlite3.Error as error:
        # Mostly "database is locked": the daemon held the write lock past the busy timeout.
        raise AdminError(f"state database {settings.database}: {error}") from None
    finally:
        store.close()


def _when(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _maybe_when(seconds: float | None) -> str | None:
    return None if seconds is None else _when(seconds)


def events(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        rows = store.events(limit=args.limit)
    if args.json:
        print(json.dumps([{**row.__dict__, "at": _when(row.at)} for row in rows]))
        return 0
    for row in rows:
        extras = " ".join(f"{key}={value}" for key, value in (("user", row.user), ("udid", row.udid), ("serial", row.serial)) if value)
        print(f"{_when(row.at)} {row.kind} {row.outcome} {extras} {row.reason or ''}".rstrip())
    return 0


# -- static challenges -----------------------------------------------------------------------


def _uses(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= MAX_STATIC_USES:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_STATIC_USES}, not {value}")
    return value


def _duration(text: str) -> int:
    try:
        return configuration.parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def challenge_create(args: argparse.Namespace) -> int:
    now = time.time()
    token, digest = tokens.mint()
    uses: int = args.uses
    # One transaction: a challenge never exists without the event that says who made it.
    with _open_store(args) as store, store.transaction():
        challenge_id = store.add_challenge(digest, "static", args.bind_udid, now=now, ttl=args.ttl, uses=uses)
        store.record_event(now=now, kind="challenge", outcome="created", udid=args.bind_udid, reason=f"static, {uses} uses")
    bound = f", bound to {args.bind_udid}" if args.bind_udid else ""
    # Only the token goes to stdout, so that CHALLENGE=$(otad-admin challenge create) captures it alone.
    print(f"static challenge {challenge_id}: {uses} use(s) until {_when(now + args.ttl)}{bound}", file=sys.stderr)
    print(token)
    return 0


# -- certificates ----------------------------------------------------------------------------


def _serial(text: str) -> str:
    """The stored form of a serial typed as ``0x0A:1B``, ``0a1b`` or ``A1B``."""
    cleaned = text.strip().replace(":", "").lower()
    cleaned = cleaned.removeprefix("0x")
    # int() alone would also take underscores, signs and spaces.
    if not re.fullmatch(r"[0-9a-f]+", cleaned):
        raise AdminError(f"not a hexadecimal serial number: {text!r}")
    return serial_hex(int(cleaned, 16))


def _print_rows(args: argparse.Namespace, rows: list[dict[str, Any]], line: str) -> int:
    """A listing: JSON with --json, else one line per row from ``line`` (empty fields shown as -)."""
    if args.json:
        print(json.dumps(rows))
        return 0
    for row in rows:
        print(line.format(**{key: "-" if value is None else value for key, value in row.items()}))
    return 0


def _status(record: CertificateRecord, now: float) -> str:
    if record.revoked is not None:
        return "revoked"
    return "expired" if record.not_after <= now else "valid"


def certs_list(args: argparse.Namespace) -> int:
    now = time.time()
    with _open_store(args) as store:
        records = store.certificates(args.udid)
    rows = [
        {
            "serial": record.serial,
            "udid": record.udid,
            "subject": record.subject,
            "not_after": _when(record.not_after),
            "status": _status(record, now),
        }
        for record in records
    ]
    # The subject goes last: it is the only field that may contain spaces.
    return _print_rows(args, rows, "{serial}  {status:<7}  {not_after}  {udid}  {subject}")


def certs_show(args: argparse.Namespace) -> int:
    serial = _serial(args.serial)
    with _open_store(args) as store:
        record = store.certificate(serial)
    if record is None:
        raise AdminError(f"no certificate with serial {serial}")
    try:
        cert = x509.load_der_x509_certificate(record.der)
    except ValueError as error:
        raise AdminError(f"certificate {serial} in the store is not readable DER: {error}") from None
    fields: dict[str, object] = {
        "serial": record.serial,
        "udid": record.udid,
        "subject": record.subject,
        "not_before": _when(record.not_before),
        "not_after": _when(record.not_after),
        "status": _status(record, time.time()),
        "issued": _when(record.issued),
        "revoked": _maybe_when(record.revoked),
        "revocation_reason": record.revocation_reason,
        "challenge_id": record.challenge_id,
        "transaction_id": record.transaction_id,
        "sha256": cert.fingerprint(hashes.SHA256()).hex(":").upper(),
        "pem": cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
    }
    if args.json:
        print(json.dumps(fields))
        return 0
    pem = fields.pop("pem")
    for key, value in fields.items():
        print(f"{key}: {'-' if value is None else value}")
    print(pem, end="")
    return 0


def certs_revoke(args: argparse.Namespace) -> int:
    serial = _serial(args.serial)
    with _open_store(args) as store:
        revoked = store.revoke(serial, reason=args.reason, now=time.time())
    if not revoked:
        raise AdminError(f"no unrevoked certificate with serial {serial}")
    print(f"revoked certificate {serial}")
    return 0


# -- SCEP requests held for approval ---------------------------------------------------------


def requests_list(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        held = store.held_requests(None if args.all else "pending")
    rows = [
        {
            "transaction_id": request.transaction_id,
            "udid": request.udid,
            "subject": request.subject,
            "status": request.status,
            "created": _when(request.created),
            "serial": request.serial,
        }
        for request in held
    ]
    return _print_rows(args, rows, "{transaction_id}  {status}  {udid}  {created}  {subject}")


def _decide(args: argparse.Namespace, approve: bool) -> int:
    with _open_store(args) as store:
        decided = store.decide_request(args.transaction_id, approve=approve, now=time.time())
    if not decided:
        raise AdminError(f"no pending request with transaction id {args.transaction_id}")
    print(f"{'approved' if approve else 'rejected'} {args.transaction_id}; the client gets the answer at its next poll")
    return 0


def requests_approve(args: argparse.Namespace) -> int:
    return _decide(args, True)


def requests_reject(args: argparse.Namespace) -> int:
    return _decide(args, False)


# -- devices ---------------------------------------------------------------------------------


def devices(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        found = store.devices()
    rows = [
        {
            "udid": device.udid,
            "user": device.user,
            "product": device.attributes.get("PRODUCT"),
            "last_seen": _when(device.last_seen),
        }
        for device in found
    ]
    return _print_rows(args, rows, "{udid}  {user}  {product}  {last_seen}")


# -- profiles --------------------------------------------------------------------------------


def lint(args: argparse.Namespace) -> int:
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as error:
        raise AdminError(f"cannot read {args.file}: {error.strerror}") from None
    # A plist starts with "<" or "bplist"; 0x30 is the DER SEQUENCE a CMS ContentInfo starts with.
    if data[:1] == b"\x30":
        try:
            data = cms.verify(data).content
        except cms.CMSError as error:
            print(payloads.Finding("error", "", f"not a readable signed profile: {error}"))
            return LINT_ERRORS
    findings = payloads.lint(data)
    for finding in findings:
        print(finding)
    if not findings:
        print("ok: no problems")
    return LINT_ERRORS if any(finding.level == "error" for finding in findings) else 0


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    hidden = argparse.SUPPRESS
    common.add_argument("--config", "-c", default=hidden, help="the daemon's ini configuration file")
    common.add_argument("--data-dir", "-d", default=hidden, help="the daemon's data directory (certs/ and the store)")
    common.add_argument("--htpasswd", default=hidden, help="the users file (default: DATA_DIR/htpasswd)")
    parser = _Parser(prog="otad-admin", description=__doc__, parents=[common])
    commands = parser.add_subparsers(dest="command", required=True)

    user = commands.add_parser("user", parents=[common], help="manage the users who may enroll")
    user_actions = user.add_subparsers(dest="action", required=True)
    add = user_actions.add_parser("add", parents=[common], help="add a user or change a password (read from stdin or prompted)")
    add.add_argument("name")
    add.set_defaults(run=user_add)
    remove = user_actions.add_parser("remove", parents=[common], help="remove a user")
    remove.add_argument("name")
    remove.set_defaults(run=user_remove)
    listing = user_actions.add_parser("list", parents=[common], help="list the users")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=user_list)

    log = commands.add_parser("events", parents=[common], help="show the newest events")
    log.add_argument("--limit", type=int, default=50)
    log.add_argument("--json", action="store_true")
    log.set_defaults(run=events)

    challenge = commands.add_parser("challenge", parents=[common], help="static SCEP challenges for non-OTA clients")
    challenge_actions = challenge.add_subparsers(dest="action", required=True)
    create = challenge_actions.add_parser(
        "create", parents=[common], help="create a static SCEP challenge and print only the token on stdout"
    )
    create.add_argument("--uses", type=_uses, default=1, help=f"how many certificates it may enroll (1 to {MAX_STATIC_USES}; default 1)")
    create.add_argument("--ttl", type=_duration, default="1h", help="how long it stays valid, like 15m, 1h or 30d (default 1h)")
    create.add_argument("--bind-udid", metavar="UDID", help="record this UDID as the challenge's binding")
    create.set_defaults(run=challenge_create)

    certs = commands.add_parser("certs", parents=[common], help="the certificates otad issued")
    certs_actions = certs.add_subparsers(dest="action", required=True)
    certs_listing = certs_actions.add_parser("list", parents=[common], help="list certificates, oldest first")
    certs_listing.add_argument("--udid", help="only the certificates of this device")
    certs_listing.add_argument("--json", action="store_true")
    certs_listing.set_defaults(run=certs_list)
    show = certs_actions.add_parser("show", parents=[common], help="one certificate's record, fingerprint and PEM")
    show.add_argument("serial", help="hexadecimal, with or without 0x and colons")
    show.add_argument("--json", action="store_true")
    show.set_defaults(run=certs_show)
    revoke = certs_actions.add_parser("revoke", parents=[common], help="mark a certificate revoked")
    revoke.add_argument("serial", help="hexadecimal, with or without 0x and colons")
    revoke.add_argument("--reason", default="unspecified", help="recorded with the revocation and in the event log")
    revoke.set_defaults(run=certs_revoke)

    held = commands.add_parser("requests", parents=[common], help="SCEP requests held for approval ([scep] approval = manual)")
    held_actions = held.add_subparsers(dest="action", required=True)
    held_listing = held_actions.add_parser("list", parents=[common], help="the pending requests (--all: every decision too)")
    held_listing.add_argument("--all", action="store_true")
    held_listing.add_argument("--json", action="store_true")
    held_listing.set_defaults(run=requests_list)
    for name, run, verb in (("approve", requests_approve, "issue"), ("reject", requests_reject, "refuse")):
        decision = held_actions.add_parser(name, parents=[common], help=f"{verb} a held request at the client's next poll")
        decision.add_argument("transaction_id")
        decision.set_defaults(run=run)

    device_listing = commands.add_parser("devices", parents=[common], help="the devices that enrolled, newest first")
    device_listing.add_argument("--json", action="store_true")
    device_listing.set_defaults(run=devices)

    profile = commands.add_parser(
        "lint", parents=[common], help=f"check a .mobileconfig (plist or CMS-signed); exit {LINT_ERRORS} on errors"
    )
    profile.add_argument("file", help="the profile, or - for stdin")
    profile.set_defaults(run=lint)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        run: Callable[[argparse.Namespace], int] = args.run
        return run(args)
    except (AdminError, configuration.ConfigError) as error:
        print(f"otad-admin: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
