"""otad's state: the ``Store`` API (written once), its SQLite and PostgreSQL engines, and the threads it runs on.

``[store] url`` empty means the SQLite file in the data directory; ``postgresql://...`` means a
database that several otad instances share. ``open_database`` gives the daemon's side of either.
"""

from __future__ import annotations

from pathlib import Path

from otad.store.records import (
    CHALLENGE_KINDS,
    CertificateRecord,
    Challenge,
    ChallengeRefused,
    CRLRecord,
    Device,
    DuplicateSerial,
    Event,
    HeldRequest,
    Revocation,
    StoreError,
    StoreUnavailable,
)
from otad.store.schema import NEWEST_SCHEMA
from otad.store.state import Database, Store, is_postgresql
from otad.store.thread import StoreThread

__all__ = [
    "CHALLENGE_KINDS",
    "NEWEST_SCHEMA",
    "CRLRecord",
    "CertificateRecord",
    "Challenge",
    "ChallengeRefused",
    "Database",
    "Device",
    "DuplicateSerial",
    "Event",
    "HeldRequest",
    "Revocation",
    "Store",
    "StoreError",
    "StoreThread",
    "StoreUnavailable",
    "is_postgresql",
    "open_database",
]


def open_database(location: Path | str, *, connections: int = 1) -> Database:
    """The daemon's database (created or upgraded): SQLite's one connection, or a pool of ``connections``
    to PostgreSQL. Blocking: call it on a store thread."""
    if is_postgresql(location):
        from otad.store.postgresql import PostgreSQLDatabase

        return PostgreSQLDatabase(str(location), connections)
    from otad.store.sqlite import SQLiteDatabase

    return SQLiteDatabase(Store.open(location))
