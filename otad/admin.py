"""``otad-admin``: manage users, static SCEP challenges and certificates, inspect state and lint profiles.

It runs on the same config and data directory as the daemon and is safe to use while the daemon
is up: the users file is replaced atomically and the SQLite store is in WAL mode, where every
write takes the lock up front (BEGIN IMMEDIATE) and waits out the daemon's transactions (a
PostgreSQL store takes concurrent connections anyway). ``store migrate`` is the exception: it
copies a stopped otad's SQLite store and certs/ into an empty PostgreSQL database.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import getpass
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from otad import __version__, cms, crl, payloads, tokens, users
from otad import config as configuration
from otad.backup import BackupError, create_backup, restore_backup
from otad.ca import OWN_FILES, serial_hex
from otad.files import OwnershipError, check_writer
from otad.store import CHALLENGE_KINDS, CertificateRecord, Challenge, Store, StoreError, is_postgresql
from otad.store.migrate import copy_store
from otad.udid import is_udid

# Exit statuses: 1 for a profile with errors (`lint`, as linters do) and for any other failure;
# 2 for a usage error (argparse's own); 141 when the reader of stdout went away (128 + SIGPIPE).
LINT_ERRORS = 1
FAILED = 1
CLOSED_PIPE = 141
MAX_STATIC_USES = 1_000_000


class AdminError(Exception):
    """A one-line message for stderr; the command exits 1."""


def _settings(args: argparse.Namespace) -> configuration.Config:
    # The common options may come before or after the subcommand; absent ones are simply missing.
    return configuration.load(
        getattr(args, "config", None),
        {"data_dir": getattr(args, "data_dir", None), "htpasswd": getattr(args, "htpasswd", None)},
    )


def _users_file(args: argparse.Namespace) -> configuration.Config:
    """The settings, for a ``user`` command: refused when the users live in an LDAP directory, not in the file."""
    settings = _settings(args)
    if settings.auth_backend == "ldap":
        raise AdminError(
            f"users live in the directory {settings.ldap_url} ([auth] backend = ldap): add, remove and list them there; "
            "otad-admin user manages only the htpasswd file"
        )
    return settings


def _writable(directory: Path) -> None:
    """Refuse to touch the daemon's files as a user whose files the daemon could not use."""
    try:
        check_writer(directory)
    except OwnershipError as error:
        raise AdminError(str(error)) from None
    except PermissionError:
        raise AdminError(f"cannot reach {directory}: permission denied; run as its owner or as root") from None


def _empty(what: str) -> None:
    print(f"otad-admin: {what}", file=sys.stderr)


def _read_password(args: argparse.Namespace) -> bytes:
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise AdminError("the passwords differ")
        return first.encode("utf-8")
    line = sys.stdin.buffer.readline()
    return line.rstrip(b"\r\n")


def _forget_first_password(settings: configuration.Config, name: bytes) -> None:
    # The kept first password is only for a first user nobody has touched yet.
    if name == users.FIRST_USER:
        users.forget_first_password(settings.first_password_file)


def user_add(args: argparse.Namespace) -> int:
    settings = _users_file(args)
    _writable(settings.htpasswd.parent)
    name = args.name.encode("utf-8")
    try:
        users.set_password(settings.htpasswd, name, _read_password(args), settings.bcrypt_rounds)
    except users.UsersFileError as error:
        raise AdminError(str(error)) from None
    _forget_first_password(settings, name)
    print(f"set the password of {args.name} in {settings.htpasswd}")
    return 0


def user_remove(args: argparse.Namespace) -> int:
    settings = _users_file(args)
    _writable(settings.htpasswd.parent)
    name = args.name.encode("utf-8")
    if not users.remove_user(settings.htpasswd, name):
        raise AdminError(f"no user {args.name} in {settings.htpasswd}")
    _forget_first_password(settings, name)
    print(f"removed {args.name} from {settings.htpasswd}")
    return 0


def user_list(args: argparse.Namespace) -> int:
    settings = _users_file(args)
    try:
        names = sorted(users.parse(settings.htpasswd.read_bytes()))
    except FileNotFoundError:
        names = []
    decoded = [name.decode("utf-8", "replace") for name in names]
    if args.json:
        print(json.dumps(decoded))
    elif decoded:
        print("\n".join(decoded))
    else:
        _empty(f"no users in {settings.htpasswd}")
    return 0


@contextlib.contextmanager
def _open_store(args: argparse.Namespace) -> Iterator[Store]:
    settings = _settings(args)
    _writable(settings.data_dir)
    try:
        store = Store.open_existing(settings.store_location)
    except StoreError as error:
        raise AdminError(str(error)) from None
    try:
        yield store
    except store.errors as error:
        # SQLite: mostly "database is locked", the daemon held the write lock past the busy
        # timeout; PostgreSQL: the server went away.
        first = str(error).strip().splitlines()
        raise AdminError(f"state database {store.location}: {first[0] if first else type(error).__name__}") from None
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
    if not rows:
        _empty("no events yet")
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


def _udid(text: str) -> str:
    if not is_udid(text):
        raise argparse.ArgumentTypeError(f"not a device UDID (8 to 64 letters, digits and dashes): {text!r}")
    return text


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


def _challenge_status(challenge: Challenge, now: float) -> str:
    reason = challenge.refusal(CHALLENGE_KINDS, now)
    return {None: "usable", "challenge revoked": "revoked", "challenge expired": "expired"}.get(reason, "used")


def challenge_list(args: argparse.Namespace) -> int:
    now = time.time()
    kinds = CHALLENGE_KINDS if args.all else ("static",)
    with _open_store(args) as store:
        found = store.challenges(kinds)
    rows = [
        {
            "id": challenge.id,
            "kind": challenge.kind,
            "status": _challenge_status(challenge, now),
            "uses_left": challenge.uses_left,
            "expires": _when(challenge.expires),
            "bound_to": challenge.bound_to,
        }
        for challenge in found
        if args.all or _challenge_status(challenge, now) == "usable"
    ]
    what = "challenges" if args.all else "usable static challenges (--all shows every kind and state)"
    return _print_rows(args, rows, "{id}  {kind}  {status:<7}  {uses_left} left  {expires}  {bound_to}", f"no {what}")


def challenge_revoke(args: argparse.Namespace) -> int:
    now = time.time()
    with _open_store(args) as store, store.transaction():
        revoked = store.revoke_challenge(args.id, now=now)
        if revoked:
            store.record_event(now=now, kind="challenge", outcome="revoked", reason=f"challenge {args.id}")
    if not revoked:
        raise AdminError(f"no unrevoked challenge with id {args.id}")
    print(f"revoked challenge {args.id}")
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


def _print_rows(args: argparse.Namespace, rows: list[dict[str, Any]], line: str, empty: str) -> int:
    """A listing: JSON with --json, else one line per row from ``line`` (empty fields shown as -), or ``empty`` on stderr."""
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        _empty(empty)
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
    empty = f"no certificates for {args.udid}" if args.udid else "no certificates issued yet"
    return _print_rows(args, rows, "{serial}  {status:<7}  {not_after}  {udid}  {subject}", empty)


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
    now = time.time()
    with _open_store(args) as store, store.transaction():
        revoked = store.revoke(serial, reason=args.reason, now=now)
        if revoked:
            store.record_event(now=now, kind="certificate", outcome="revoked", serial=serial, reason=args.reason)
    if not revoked:
        raise AdminError(f"no unrevoked certificate with serial {serial}")
    check = _settings(args).crl_check
    print(f"revoked certificate {serial} ({args.reason}); OCSP says so at once, the daemon re-signs the CRL within {check} s")
    return 0


def crl_show(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        record = store.latest_crl()
    if record is None:
        raise AdminError("no CRL has been published yet: the daemon publishes one when it starts")
    try:
        current = x509.load_der_x509_crl(record.der)
    except ValueError as error:
        raise AdminError(f"CRL {record.number} in the store is not readable DER: {error}") from None
    entries = []
    for revoked in current:
        try:
            reason = crl.NAMES[revoked.extensions.get_extension_for_class(x509.CRLReason).value.reason]
        except x509.ExtensionNotFound:
            reason = "unspecified"
        entries.append(
            {"serial": serial_hex(revoked.serial_number), "revoked": _when(revoked.revocation_date_utc.timestamp()), "reason": reason}
        )
    fields = {
        "number": record.number,
        "this_update": _when(record.this_update),
        "next_update": _when(record.next_update),
        "entries": entries,
    }
    if args.json:
        print(json.dumps(fields))
        return 0
    print(f"CRL {record.number}: this update {fields['this_update']}, next update {fields['next_update']}, {len(entries)} entries")
    for entry in entries:
        print(f"{entry['serial']}  {entry['revoked']}  {entry['reason']}")
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
    empty = "no SCEP requests held" if args.all else "no SCEP requests waiting for a decision"
    return _print_rows(args, rows, "{transaction_id}  {status}  {udid}  {created}  {subject}", empty)


def _decide(args: argparse.Namespace, approve: bool) -> int:
    now = time.time()
    outcome = "approved" if approve else "rejected"
    with _open_store(args) as store, store.transaction():
        decided = store.decide_request(args.transaction_id, approve=approve, now=now)
        if decided:
            store.record_event(now=now, kind="scep", outcome=outcome, reason=f"transaction {args.transaction_id}")
    if not decided:
        raise AdminError(f"no pending request with transaction id {args.transaction_id}")
    print(f"{'approved' if approve else 'rejected'} {args.transaction_id}; the client gets the answer at its next poll")
    return 0


def requests_approve(args: argparse.Namespace) -> int:
    return _decide(args, True)


def requests_reject(args: argparse.Namespace) -> int:
    return _decide(args, False)


# -- moving the store ------------------------------------------------------------------------


def store_migrate(args: argparse.Namespace) -> int:
    """Copy this data directory's SQLite store and its certs/ into an empty PostgreSQL database."""
    settings = _settings(args)
    if not is_postgresql(args.to):
        raise AdminError("--to must be a postgresql:// URL")
    if settings.store_url:
        raise AdminError("the configured store is already PostgreSQL ([store] url); migrate copies a data directory's SQLite store")
    _writable(settings.data_dir)
    certs_dir = settings.certs_dir
    ca_files = {name: (certs_dir / name).read_bytes() for name in OWN_FILES if (certs_dir / name).exists()}
    try:
        source = Store.open_existing(settings.database)
    except StoreError as error:
        raise AdminError(str(error)) from None
    try:
        if source.has_certificates() and not {"ca.key", "ca.pem"} <= set(ca_files):
            raise AdminError(f"{certs_dir} lacks the CA (ca.key, ca.pem) that issued the store's certificates; restore it first")
        try:
            # Creates the schema in the new database (nothing runs on it yet) or finds it there.
            target = Store.open(args.to)
        except StoreError as error:
            raise AdminError(str(error)) from None
        try:
            counts = copy_store(source, target, ca_files=ca_files, now=time.time())
        except StoreError as error:
            raise AdminError(str(error)) from None
        except (*source.errors, *target.errors) as error:
            first = str(error).strip().splitlines()
            raise AdminError(f"copying into {target.location} failed, nothing was kept: {first[0] if first else error}") from None
        finally:
            location = target.location
            target.close()
    finally:
        source.close()
    print(f"copied {settings.database} and {certs_dir} into {location} (one transaction):")
    print("  " + ", ".join(f"{table} {count}" for table, count in counts.items()))
    print(
        f"next: set [store] url in the configuration of every otad instance (this one's too) and start them; {settings.database} "
        "is left as it was and is no longer used"
    )
    return 0


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
    return _print_rows(args, rows, "{udid}  {user}  {product}  {last_seen}", "no devices have enrolled yet")


# -- backup and restore ----------------------------------------------------------------------


def backup(args: argparse.Namespace) -> int:
    settings = _settings(args)
    target = Path(args.file)
    if settings.store_url:
        raise AdminError(
            "the store is PostgreSQL ([store] url): back it up with pg_dump (README, 'Backups'); backup copies a SQLite data directory"
        )
    with _open_store(args) as store:
        try:
            summary = create_backup(settings, store, target)
        except BackupError as error:
            raise AdminError(str(error)) from None
        except OSError as error:
            raise AdminError(f"cannot write the backup {target}: {error.strerror or error}") from None
    for note in summary.notes:
        print(f"otad-admin: {note}", file=sys.stderr)
    keys = sum(1 for name in summary.members if name.endswith(".key"))
    print(f"backed up {settings.data_dir} to {target} (mode 0600; {len(summary.members)} entries, {keys} private keys)")
    return 0


def restore(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir_target)
    try:
        summary = restore_backup(Path(args.file), data_dir)
    except BackupError as error:
        raise AdminError(str(error)) from None
    except OSError as error:
        raise AdminError(f"cannot restore into {data_dir}: {error.strerror or error}") from None
    print(f"restored {len(summary.members)} entries into {data_dir.absolute()}; start otad with --data-dir {data_dir.absolute()}")
    return 0


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
    common = argparse.ArgumentParser(add_help=False)
    hidden = argparse.SUPPRESS
    common.add_argument("--config", "-c", default=hidden, help="the daemon's ini configuration file")
    common.add_argument("--data-dir", "-d", default=hidden, help="the daemon's data directory (certs/ and the store)")
    common.add_argument("--htpasswd", default=hidden, help="the users file (default: DATA_DIR/htpasswd)")
    parser = argparse.ArgumentParser(
        prog="otad-admin", description=__doc__, parents=[common], epilog="Exit status: 0 ok, 1 failed (lint: errors found), 2 usage error."
    )
    parser.add_argument("--version", action="version", version=f"otad-admin {__version__}")
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
    create.add_argument("--bind-udid", metavar="UDID", type=_udid, help="record this UDID as the challenge's binding")
    create.set_defaults(run=challenge_create)
    challenge_listing = challenge_actions.add_parser(
        "list", parents=[common], help="usable static challenges (--all: every kind, used, expired and revoked ones too)"
    )
    challenge_listing.add_argument("--all", action="store_true")
    challenge_listing.add_argument("--json", action="store_true")
    challenge_listing.set_defaults(run=challenge_list)
    challenge_revoking = challenge_actions.add_parser("revoke", parents=[common], help="make a challenge unusable at once")
    challenge_revoking.add_argument("id", type=int, help="the challenge's id, as challenge create and challenge list show it")
    challenge_revoking.set_defaults(run=challenge_revoke)

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
    revoke.add_argument(
        "--reason", default="unspecified", choices=list(crl.REASONS), help="the RFC 5280 reason, put in the CRL and OCSP answers"
    )
    revoke.set_defaults(run=certs_revoke)

    crl_listing = commands.add_parser("crl", parents=[common], help="the current CRL: its number, next update and entries")
    crl_listing.add_argument("--json", action="store_true")
    crl_listing.set_defaults(run=crl_show)

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

    store = commands.add_parser("store", parents=[common], help="the state database")
    store_actions = store.add_subparsers(dest="action", required=True)
    migrate = store_actions.add_parser(
        "migrate",
        parents=[common],
        help="copy the SQLite store and certs/ into an empty PostgreSQL database (stop otad first)",
    )
    migrate.add_argument("--to", required=True, metavar="URL", help="postgresql://USER@HOST/DATABASE (libpq URL)")
    migrate.set_defaults(run=store_migrate)

    device_listing = commands.add_parser("devices", parents=[common], help="the devices that enrolled, newest first")
    device_listing.add_argument("--json", action="store_true")
    device_listing.set_defaults(run=devices)

    backing_up = commands.add_parser(
        "backup", parents=[common], help="a consistent copy of the data directory while the daemon runs, as a tar archive (mode 0600)"
    )
    backing_up.add_argument("file", help="the archive to write (gzip-compressed if it ends in .gz or .tgz); replaced atomically")
    backing_up.set_defaults(run=backup)
    restoring = commands.add_parser("restore", help="unpack a backup into a new or empty data directory")
    restoring.add_argument("file", help="an archive made by otad-admin backup")
    restoring.add_argument("data_dir_target", metavar="DATA_DIR", help="the new data directory (must not exist, or be empty)")
    restoring.set_defaults(run=restore)

    profile = commands.add_parser(
        "lint", parents=[common], help=f"check a .mobileconfig (plist or CMS-signed); exit {LINT_ERRORS} on errors"
    )
    profile.add_argument("file", help="the profile, or - for stdin")
    profile.set_defaults(run=lint)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as leaving:
        # --help, --version (0) and usage errors (2): argparse has already printed its lines.
        return leaving.code if isinstance(leaving.code, int) else FAILED
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        status = run(args)
        sys.stdout.flush()
        return status
    except (AdminError, configuration.ConfigError) as error:
        print(f"otad-admin: {error}", file=sys.stderr)
        return FAILED
    except BrokenPipeError:
        # `otad-admin events | head -1`: the reader has all it wanted. Python would print a
        # traceback flushing stdout at exit, so point stdout at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return CLOSED_PIPE


if __name__ == "__main__":
    sys.exit(main())
