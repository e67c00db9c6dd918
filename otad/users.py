"""The users file (Apache htpasswd with bcrypt entries) and the twisted.cred checker that reads it.

The file stays compatible with ``htpasswd -B`` from apache2-utils, and the checker re-reads it
whenever it changes, so users can be added or removed without restarting otad.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from otad.files import sync_directory, write_atomically

log = Logger()

# bcrypt looks at the first 72 bytes only; Apache's htpasswd truncates silently, and so do we
# when checking, so that entries it wrote keep working.
BCRYPT_MAX = 72
BCRYPT_PREFIXES = (b"$2y$", b"$2b$", b"$2a$")


class UsersFileError(ValueError):
    """A user name or password otad will not write; str() says why."""


def hash_password(password: bytes, rounds: int = 12) -> bytes:
    """A bcrypt hash in Apache's ``$2y$`` spelling (the same algorithm as ``$2b$``)."""
    if len(password) > BCRYPT_MAX:
        raise UsersFileError(f"passwords longer than {BCRYPT_MAX} bytes are not supported by bcrypt")
    if not password:
        raise UsersFileError("the password is empty")
    return b"$2y$" + bcrypt.hashpw(password, bcrypt.gensalt(rounds))[4:]


def check_password(password: bytes, hashed: bytes) -> bool:
    if not hashed.startswith(BCRYPT_PREFIXES):
        return False
    try:
        return bcrypt.checkpw(password[:BCRYPT_MAX], b"$2b$" + hashed[4:])
    except ValueError:
        return False


def _check_name(name: bytes) -> None:
    if not name or b":" in name or b"\n" in name or b"\r" in name or len(name) > 255:
        raise UsersFileError("a user name must be 1 to 255 bytes without ':' or line breaks")


def parse(data: bytes) -> dict[bytes, bytes]:
    """``name:hash`` lines; blank lines and ``#`` comments are skipped."""
    users: dict[bytes, bytes] = {}
    for line in data.splitlines():
        line = line.strip()
        if not line or line.startswith(b"#") or b":" not in line:
            continue
        name, hashed = line.split(b":", 1)
        users[name] = hashed
    return users


def _render(users: dict[bytes, bytes]) -> bytes:
    return b"".join(name + b":" + hashed + b"\n" for name, hashed in users.items())


def _read(path: Path) -> dict[bytes, bytes]:
    try:
        return parse(path.read_bytes())
    except FileNotFoundError:
        return {}


def set_password(path: Path, name: bytes, password: bytes, rounds: int = 12) -> None:
    """Add a user or change a password, replacing the file atomically (mode 0600)."""
    _check_name(name)
    users = _read(path)
    users[name] = hash_password(password, rounds)
    write_atomically(path, _render(users), 0o600)


def remove_user(path: Path, name: bytes) -> bool:
    """Remove a user; returns whether there was one."""
    users = _read(path)
    if users.pop(name, None) is None:
        return False
    write_atomically(path, _render(users), 0o600)
    return True


def credential_bytes(credentials: IUsernamePassword) -> tuple[bytes, bytes]:
    """The name and password as bytes (twisted.cred allows str), as every checker compares them."""
    name, password = credentials.username, credentials.password
    return (
        name.encode("utf-8") if isinstance(name, str) else name,
        password.encode("utf-8") if isinstance(password, str) else password,
    )


FIRST_USER = b"apple"


@dataclass(frozen=True)
class FirstPassword:
    """The first user's password, while nobody has used or changed it; ``created`` on the start that made it."""

    password: str
    created: bool


def first_user(htpasswd: Path, keep: Path, rounds: int = 12) -> FirstPassword | None:
    """Create the users file with the first user, or find that user's password still unused in ``keep``.

    The password is written to ``keep`` (mode 0600) before the users file exists, so no users
    file ever holds a password that nobody can read; ``keep`` goes when the password is used
    (``HtpasswdChecker``) or changed. Returns None when there is nothing to show.
    """
    if not htpasswd.exists():
        password = secrets.token_urlsafe(12)
        write_atomically(keep, f"{password}\n".encode("ascii"), 0o600)
        set_password(htpasswd, FIRST_USER, password.encode("ascii"), rounds)
        return FirstPassword(password, created=True)
    try:
        password = keep.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    hashed = _read(htpasswd).get(FIRST_USER)
    if hashed is None or not check_password(password.encode("ascii"), hashed):
        forget_first_password(keep)
        return None
    return FirstPassword(password, created=False)


def forget_first_password(keep: Path) -> None:
    """Remove the kept first password: it has been used, or the first user was changed or removed."""
    try:
        keep.unlink()
    except FileNotFoundError:
        return
    sync_directory(keep.parent)


@implementer(ICredentialsChecker)
class HtpasswdChecker:
    """Checks HTTP Basic credentials against the users file, off the reactor thread.

    ``run`` puts a blocking call on a worker pool; bcrypt is slow on purpose, and reading and
    stat-ing the file is I/O, so all of it happens there.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, path: Path, run: Callable[..., Deferred[Any]], first_password: Path | None = None, rounds: int = 12) -> None:
        self._path = path
        # An unknown name is checked against a hash of the cost new users get.
        self._decoy = b"$2b$%02d$" % rounds + b"." * 53
        self._first_password = first_password
        self._run = run
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._users: dict[bytes, bytes] = {}

    def _current_users(self) -> dict[bytes, bytes]:
        try:
            status = os.stat(self._path)
        except FileNotFoundError:
            log.error("the users file {path} is missing; every login is refused", path=str(self._path))
            return {}
        stamp = (status.st_ino, status.st_mtime_ns, status.st_size)
        with self._lock:
            if stamp != self._stamp:
                self._users = _read(self._path)
                self._stamp = stamp
            return self._users

    def _check(self, name: bytes, password: bytes) -> bytes:
        hashed = self._current_users().get(name)
        if hashed is None:
            # Spend the same time as for a known user, so response times don't reveal names.
            check_password(password, self._decoy)
            raise UnauthorizedLogin("unknown user or wrong password")
        if not hashed.startswith(BCRYPT_PREFIXES):
            log.warn(
                "user {user} has a non-bcrypt entry in {path}; re-add it with htpasswd -B",
                user=name.decode("utf-8", "replace"),
                path=str(self._path),
            )
            raise UnauthorizedLogin("unsupported password hash")
        if not check_password(password, hashed):
            raise UnauthorizedLogin("unknown user or wrong password")
        if name == FIRST_USER and self._first_password is not None and self._first_password.exists():
            forget_first_password(self._first_password)
            log.info("the first user logged in; removed {path}", path=str(self._first_password))
        return name

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[bytes | tuple[()]]:
        return self._run(self._check, *credential_bytes(credentials))
