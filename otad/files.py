"""Files in the data directory: written atomically, and always owned by the data directory's owner.

The daemon usually runs as its own user (``DynamicUser=yes`` under systemd) while an admin runs
``otad-admin`` as root. A file that root creates or replaces there must stay readable and
writable by the daemon, so every write here keeps the replaced file's owner, group and mode,
and gives a new file the owner of the directory it is created in.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path


class OwnershipError(PermissionError):
    """This process cannot write a file that the data directory's owner could still use; str() says who to run as."""


def owner_name(uid: int) -> str:
    """``name (uid N)``, or ``uid N`` for a user with no name (systemd's dynamic users once stopped)."""
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def check_writer(directory: Path) -> None:
    """Refuse to write below ``directory`` unless this process is root or the directory's owner.

    Anyone else would leave files the daemon's user may not be able to read or replace.
    """
    try:
        owner = directory.stat().st_uid
    except FileNotFoundError:
        return
    euid = os.geteuid()
    if euid not in (0, owner):
        raise OwnershipError(f"{directory} belongs to {owner_name(owner)}; run as that user (for example sudo -u '#{owner}') or as root")


def _ownership(path: Path) -> tuple[int, int, int | None]:
    """(uid, gid, mode) for a file written at ``path``: the old file's, else the directory's owner and no mode."""
    try:
        existing = path.stat()
    except FileNotFoundError:
        parent = path.parent.stat()
        return parent.st_uid, parent.st_gid, None
    return existing.st_uid, existing.st_gid, stat.S_IMODE(existing.st_mode)


def _adopt(descriptor: int, uid: int, gid: int) -> None:
    """Give an open file to ``uid:gid`` when this process is root and the file would otherwise be root's."""
    if os.geteuid() == 0 and (uid, gid) != (0, 0):
        os.fchown(descriptor, uid, gid)


def give_like(path: Path, model: Path) -> None:
    """Give ``path`` the owner and group of ``model`` (when this process is root; otherwise they already match)."""
    reference = model.stat()
    if os.geteuid() == 0 and (reference.st_uid, reference.st_gid) != (0, 0):
        os.chown(path, reference.st_uid, reference.st_gid)


def write_atomically(path: Path, data: bytes, mode: int, *, keep_mode: bool = True) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the whole new one.

    A replaced file keeps its owner, group and (with ``keep_mode``) its mode; a new one gets
    ``mode`` and the directory's owner.
    """
    check_writer(path.parent)
    uid, gid, old_mode = _ownership(path)
    final_mode = old_mode if keep_mode and old_mode is not None else mode
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        _adopt(descriptor, uid, gid)
        os.fchmod(descriptor, final_mode)
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view) :]
        os.fsync(descriptor)
    except BaseException:
        os.close(descriptor)
        temporary.unlink(missing_ok=True)
        raise
    os.close(descriptor)
    os.replace(temporary, path)
    sync_directory(path.parent)


def sync_directory(directory: Path) -> None:
    """fsync a directory, so that a rename or unlink in it survives a power cut."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def make_directory(path: Path, mode: int = 0o700) -> None:
    """Create ``path`` (and missing parents) owned like its parent, as ``mkdir -p`` by that owner would."""
    if path.is_dir():
        return
    if not path.parent.is_dir():
        make_directory(path.parent, mode)
    check_writer(path.parent)
    parent = path.parent.stat()
    path.mkdir(mode=mode)
    descriptor = os.open(path, os.O_RDONLY)
    try:
        _adopt(descriptor, parent.st_uid, parent.st_gid)
    finally:
        os.close(descriptor)
