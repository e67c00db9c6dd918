"""``otad-admin``: manage users and inspect state, on the same config and data directory as the daemon.

Safe to run while the daemon is up: the users file is replaced atomically and the SQLite store
is in WAL mode with a busy timeout.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import json
import sys
from typing import Callable, Sequence

from otad import config as configuration
from otad import users
from otad.store import Store, StoreError


class AdminError(Exception):
    """A one-line message for stderr; the command exits 1."""


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


def user_add(args: argparse.Namespace) -> None:
    settings = _settings(args)
    try:
        users.set_password(settings.htpasswd, args.name.encode("utf-8"), _read_password(args))
    except users.UsersFileError as error:
        raise AdminError(str(error)) from None
    print(f"set the password of {args.name} in {settings.htpasswd}")


def user_remove(args: argparse.Namespace) -> None:
    settings = _settings(args)
    if not users.remove_user(settings.htpasswd, args.name.encode("utf-8")):
        raise AdminError(f"no user {args.name} in {settings.htpasswd}")
    print(f"removed {args.name} from {settings.htpasswd}")


def user_list(args: argparse.Namespace) -> None:
    settings = _settings(args)
    try:
        names = sorted(users.parse(settings.htpasswd.read_bytes()))
    except FileNotFoundError:
        names = []
    decoded = [name.decode("utf-8", "replace") for name in names]
    print(json.dumps(decoded) if args.json else "\n".join(decoded))


def _open_store(settings: configuration.Config) -> Store:
    if not settings.database.exists():
        raise AdminError(f"no state database at {settings.database}; has otad been started with this --data-dir?")
    try:
        return Store(settings.database)
    except StoreError as error:
        raise AdminError(str(error)) from None


def _when(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def events(args: argparse.Namespace) -> None:
    store = _open_store(_settings(args))
    try:
        rows = store.events(limit=args.limit)
    finally:
        store.close()
    if args.json:
        print(json.dumps([{**row.__dict__, "at": _when(row.at)} for row in rows]))
        return
    for row in rows:
        extras = " ".join(f"{key}={value}" for key, value in (("user", row.user), ("udid", row.udid), ("serial", row.serial)) if value)
        print(f"{_when(row.at)} {row.kind} {row.outcome} {extras} {row.reason or ''}".rstrip())


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    hidden = argparse.SUPPRESS
    common.add_argument("--config", "-c", default=hidden, help="the daemon's ini configuration file")
    common.add_argument("--data-dir", "-d", default=hidden, help="the daemon's data directory (certs/ and the store)")
    common.add_argument("--htpasswd", default=hidden, help="the users file (default: DATA_DIR/htpasswd)")
    parser = argparse.ArgumentParser(prog="otad-admin", description=__doc__, parents=[common])
    commands = parser.add_subparsers(dest="command", required=True)

    user = commands.add_parser("user", help="manage the users who may enroll").add_subparsers(dest="action", required=True)
    add = user.add_parser("add", parents=[common], help="add a user or change a password (read from stdin or prompted)")
    add.add_argument("name")
    add.set_defaults(run=user_add)
    remove = user.add_parser("remove", parents=[common], help="remove a user")
    remove.add_argument("name")
    remove.set_defaults(run=user_remove)
    listing = user.add_parser("list", parents=[common], help="list the users")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=user_list)

    log = commands.add_parser("events", parents=[common], help="show the newest events")
    log.add_argument("--limit", type=int, default=50)
    log.add_argument("--json", action="store_true")
    log.set_defaults(run=events)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run: Callable[[argparse.Namespace], None] = args.run
    try:
        run(args)
    except (AdminError, configuration.ConfigError) as error:
        print(f"otad-admin: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
