"""Backups of the data directory while the daemon runs, and their restore into a new one.

A backup is a tar archive (gzip-compressed when its name ends in .gz or .tgz) of what otad cannot
make again: a consistent snapshot of the state database (SQLite's online backup, taken while the
daemon goes on writing), ``certs/`` with every private key, the users file, the pending first
password and the templates when they live in the data directory. The archive holds keys, so it
is created with mode 0600 and written under a temporary name first: a crash never leaves a
partial archive under the given name. A restore goes only into a new or empty directory, checks
that the archive is an otad backup and that its database is whole before anything is written,
and gives every file the directory's owner, so the daemon's user can use them.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from otad.config import Config
from otad.files import sync_directory
from otad.store import NEWEST_SCHEMA, Store

DATABASE = "otad.sqlite"
# What makes an archive an otad backup: without these, no daemon can carry on from it.
REQUIRED = (DATABASE, "certs/ca.pem", "certs/ca.key")


class BackupError(Exception):
    """The backup or restore cannot be done; str() is one line saying why."""


@dataclass
class Summary:
    """What went into a backup (or came out of one), and what was left out and why."""

    members: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _compression(path: Path) -> bool:
    return path.name.endswith((".gz", ".tgz"))


def _files_below(directory: Path) -> Iterator[Path]:
    """Regular files under ``directory``, sorted; leftovers of interrupted atomic writes (``.NAME.PID.tmp``) are skipped."""
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.is_symlink() and not (path.name.startswith(".") and path.name.endswith(".tmp")):
            yield path


def _inside(path: Path, directory: Path) -> bool:
    return path.resolve().is_relative_to(directory.resolve())


def _add(archive: tarfile.TarFile, path: Path, name: str, summary: Summary) -> None:
    info = archive.gettarinfo(str(path), arcname=name)
    # Owners mean nothing on another machine: a restore gives every file the data directory's owner.
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if info.isdir():
        archive.addfile(info)
    else:
        with open(path, "rb") as handle:
            archive.addfile(info, handle)
    summary.members.append(name)


def create_backup(settings: Config, store: Store, target: Path) -> Summary:
    """Write the backup of ``settings.data_dir`` to ``target``; ``store`` is the open state database (blocking)."""
    data_dir = settings.data_dir
    target = target.absolute()
    if _inside(target, data_dir):
        raise BackupError(f"{target} is inside the data directory {data_dir}: write the backup somewhere else")
    if not target.parent.is_dir():
        raise BackupError(f"no directory {target.parent} to write the backup in")
    if not settings.certs_dir.is_dir():
        raise BackupError(f"no {settings.certs_dir}: has otad been started with this data directory?")
    summary = Summary()
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with tempfile.TemporaryDirectory(prefix=".otad-backup-", dir=target.parent) as scratch:
        snapshot = Path(scratch) / DATABASE
        try:
            store.backup(snapshot)
            os.chmod(snapshot, 0o600)
        except sqlite3.Error as error:
            raise BackupError(f"cannot copy the state database {settings.database}: {error}") from None
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                archive = tarfile.open(fileobj=handle, mode="w:gz") if _compression(target) else tarfile.open(fileobj=handle, mode="w")
                with archive:
                    _add(archive, snapshot, DATABASE, summary)
                    certs = settings.certs_dir
                    _add(archive, certs, "certs", summary)
                    for path in _files_below(certs):
                        _add(archive, path, path.relative_to(data_dir).as_posix(), summary)
                    if settings.htpasswd.is_file():
                        inside = _inside(settings.htpasswd, data_dir)
                        name = settings.htpasswd.relative_to(data_dir).as_posix() if inside else "htpasswd"
                        if not inside:
                            summary.notes.append(
                                f"the users file {settings.htpasswd} is outside the data directory; it is saved as htpasswd"
                            )
                        _add(archive, settings.htpasswd, name, summary)
                    if settings.first_password_file.is_file():
                        _add(archive, settings.first_password_file, settings.first_password_file.name, summary)
                    if settings.templates is not None and settings.templates.is_dir():
                        if _inside(settings.templates, data_dir):
                            _add(archive, settings.templates, settings.templates.relative_to(data_dir).as_posix(), summary)
                            for path in _files_below(settings.templates):
                                _add(archive, path, path.relative_to(data_dir).as_posix(), summary)
                        else:
                            summary.notes.append(
                                f"the templates in {settings.templates} are outside the data directory: back them up with the configuration"
                            )
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    sync_directory(target.parent)
    return summary


def _check_database(path: Path) -> int:
    """The schema version of a restored database, once SQLite finds it whole; BackupError otherwise."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            result = db.execute("PRAGMA integrity_check").fetchone()[0]
            version = db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error as error:
        raise BackupError(f"the archive's {DATABASE} is not a usable database: {error}") from None
    if result != "ok":
        raise BackupError(f"the archive's {DATABASE} is damaged: {result}")
    if int(version or 0) > NEWEST_SCHEMA:
        raise BackupError(
            f"the archive's database is at schema version {version}, newer than this otad ({NEWEST_SCHEMA}): restore it with that otad"
        )
    return int(version or 0)


def _give_tree(directory: Path, uid: int, gid: int) -> None:
    for path in [directory, *directory.rglob("*")]:
        os.lchown(path, uid, gid)


def restore_backup(archive_path: Path, data_dir: Path) -> Summary:
    """Unpack the backup at ``archive_path`` into ``data_dir``, which must be new or empty (blocking)."""
    data_dir = data_dir.absolute()
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise BackupError(f"{data_dir} is not an empty directory: restore into a new one (move the old data directory aside first)")
    try:
        archive = tarfile.open(archive_path, "r:*")
    except OSError as error:
        raise BackupError(f"cannot read the backup {archive_path}: {error.strerror or error}") from None
    except tarfile.TarError:
        raise BackupError(f"cannot read the backup {archive_path}: not a tar archive (plain or compressed)") from None
    summary = Summary()
    with archive:
        try:
            members = archive.getmembers()
        except (tarfile.TarError, EOFError):
            raise BackupError(f"the backup {archive_path} is truncated or damaged") from None
        names = {member.name for member in members}
        missing = [name for name in REQUIRED if name not in names]
        if missing:
            raise BackupError(f"{archive_path} is not an otad backup: it has no {missing[0]}")
        for member in members:
            if not (member.isfile() or member.isdir()):
                raise BackupError(f"{archive_path} holds {member.name!r}, which is neither a file nor a directory")
            try:
                tarfile.data_filter(member, str(data_dir))
            except tarfile.FilterError as error:
                raise BackupError(f"{archive_path} holds an unsafe member: {error}") from None
        created = not data_dir.exists()
        parent = data_dir.parent
        if created:
            parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.restore-", dir=parent))
        try:
            try:
                archive.extractall(staging, filter="data")
            except (tarfile.TarError, EOFError):
                raise BackupError(f"the backup {archive_path} is truncated or damaged") from None
            _check_database(staging / DATABASE)
            # Keys stay the daemon's alone, whatever modes the archive gave them.
            os.chmod(staging, 0o700)
            os.chmod(staging / "certs", 0o700)
            for secret in [*(staging / "certs").glob("*.key"), staging / "first-password"]:
                if secret.is_file():
                    os.chmod(secret, stat.S_IMODE(secret.stat().st_mode) & 0o600)
            owner = (data_dir if not created else parent).stat()
            if os.geteuid() == 0:
                _give_tree(staging, owner.st_uid, owner.st_gid)
            if created:
                staging.rename(data_dir)
            else:
                for entry in staging.iterdir():
                    entry.rename(data_dir / entry.name)
                staging.rmdir()
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    sync_directory(data_dir)
    sync_directory(parent)
    summary.members = sorted(member.name for member in members)
    return summary
