"""Running a test against each store engine: a mixin per engine, and raw SQL that bypasses otad's store.

A test class that mixes in ``SQLiteStore`` or ``PostgreSQLStore`` gets ``store_location(data_dir)``
(the SQLite file, or a fresh PostgreSQL database of its own) and ``store_config(data_dir)`` (the
``[store]`` section a daemon's config file needs for it). ``raw`` talks to the database with the
driver directly, as a test's independent view of what otad wrote.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg

from tests import postgres


class SQLiteStore:
    engine = "sqlite"

    def store_location(self, data_dir: Path) -> Path | str:
        return data_dir / "otad.sqlite"

    def store_config(self, data_dir: Path) -> str:
        return ""


class PostgreSQLStore:
    engine = "postgresql"
    _urls: dict[Path, str]

    def store_location(self, data_dir: Path) -> Path | str:
        urls = self.__dict__.setdefault("_urls", {})
        if data_dir not in urls:
            urls[data_dir] = postgres.new_database()
        return urls[data_dir]

    def store_config(self, data_dir: Path) -> str:
        return f"[store]\nurl = {self.store_location(data_dir)}\n"


def raw(location: Path | str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one statement (``?`` placeholders) on the database itself, committed; its rows, if any."""
    if isinstance(location, str):
        with psycopg.connect(location, autocommit=True) as connection:
            cursor = connection.execute(sql.replace("?", "%s"), list(params))
            return list(cursor.fetchall()) if cursor.description else []
    connection = sqlite3.connect(location)
    try:
        rows = connection.execute(sql, params).fetchall()
        connection.commit()
        return rows
    finally:
        connection.close()
