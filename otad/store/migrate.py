"""Copying a whole store into an empty one: ``otad-admin store migrate --to postgresql://...``.

Every table, every row and every column, with the same ids (certificates name the challenge
that authorised them), in one transaction on the target under its CA lock, so a daemon started
on the target meanwhile waits and then finds everything; the source is read inside a write
transaction, so nothing changes under the copy. The target's generated ids continue after the
copied ones.
"""

from __future__ import annotations

from collections.abc import Mapping

from otad.store.records import StoreError
from otad.store.state import Store

# Every table of the schema but schema_version, parents before the tables that refer to them.
TABLES = ("challenges", "events", "devices", "certificates", "deliveries", "scep_requests", "login_failures", "crls", "ca_files")
# Tables whose id the database generates.
GENERATED_IDS = ("challenges", "events", "deliveries")


def _columns(store: Store, table: str) -> list[str]:
    cursor = store._db.execute(f"SELECT * FROM {table} LIMIT 0")
    description = getattr(cursor, "description", None) or ()
    return [column[0] for column in description]


def copy_store(source: Store, target: Store, *, ca_files: Mapping[str, bytes], now: float) -> dict[str, int]:
    """Copy every row of ``source`` into ``target``, which must hold none, plus ``ca_files`` (certs/, which a
    SQLite store keeps beside it rather than in it); returns the rows per table, counted in the target."""
    counts: dict[str, int] = {}
    with source.transaction(), target.transaction():
        target.lock_ca()
        for table in TABLES:
            if target._db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is not None:
                raise StoreError(f"the target {target.location} already holds {table}: migrate into an empty database only")
        for table in TABLES:
            columns = _columns(source, table)
            names = ", ".join(f'"{column}"' for column in columns)
            marks = ", ".join("?" for _ in columns)
            for row in source._db.execute(f"SELECT {names} FROM {table}").fetchall():
                target._db.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", tuple(row))
        stored = target.ca_files()
        extra = {name: content for name, content in ca_files.items() if stored.get(name) != content}
        if extra:
            target.put_ca_files(extra, now=now)
        for table in GENERATED_IDS:
            target._db.sequence_after(table, "id")
        for table in TABLES:
            counts[table] = int(target._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
            expected = int(source._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
            if table != "ca_files" and counts[table] != expected:
                raise StoreError(f"copied {counts[table]} rows of {table} but the source has {expected}; nothing was kept")
    return counts
