"""SQLite on the app's engine: a real transaction per revision, foreign keys that hold
through table copies, and no database file created by accident.

pysqlite opens transactions itself, late, and commits before DDL, so a failed batch
migration would leave a half-copied table behind. SQLAlchemy's documented recipe: turn the
driver's handling off and emit BEGIN ourselves. IMMEDIATE takes SQLite's write lock up front,
so a revision never fails half-way for want of it. Listeners go on the app's engine only.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from .errors import MigrationError


def database_file(url: sa.engine.URL, root: Path) -> Path | None:
    """The SQLite file a URL names (relative paths from root), or None for other
    databases and in-memory SQLite."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    location = url.database
    if url.query.get("uri") == "true":
        location = location.removeprefix("file:")
        if location in ("", ":memory:") or url.query.get("mode") == "memory":
            return None
    path = Path(location)
    return path if path.is_absolute() else root / path


def is_read_only(url: sa.engine.URL) -> bool:
    return url.query.get("uri") == "true" and url.query.get("mode") == "ro"


def uri_creator(url: sa.engine.URL, path: Path, guard: Callable[[], None], timeout: float):
    """Connect to a `sqlite:///file:...?uri=true` URL as the URI it is. Flask-SQLAlchemy 2.5
    puts the app's folder in front of every SQLite path, which turns a URI into a file
    named "/app/file:data.db?mode=ro"."""
    query = "&".join(f"{key}={value}" for key, value in url.query.items() if key != "uri")
    uri = f"file:{path}" + (f"?{query}" if query else "")

    def connect():
        if guard() == "memory":
            return sqlite3.connect(":memory:", check_same_thread=False)
        return sqlite3.connect(uri, uri=True, timeout=timeout, check_same_thread=False)

    return connect


def on_connect(dbapi_connection, connection_record) -> None:
    dbapi_connection.isolation_level = None
    dbapi_connection.execute("PRAGMA foreign_keys=ON")


def on_begin(connection) -> None:
    options = connection.get_execution_options()
    if options.get("migration"):
        # With enforcement on, a batch copy's DROP TABLE of a parent table deletes (ON DELETE
        # CASCADE) or blocks on its child rows; SQLite ignores this pragma inside a
        # transaction, so it goes before BEGIN. on_commit checks the keys instead.
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
    budget = options.get("lock_budget")
    if budget is None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
        return
    # SQLite's busy timeout is per statement; the run's waits together get one timeout.
    connection.exec_driver_sql(f"PRAGMA busy_timeout = {budget.milliseconds_left()}")
    with budget.spend():
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def on_commit(connection) -> None:
    """Before a migration commits, every foreign key must hold, as SQLite's documented
    ALTER TABLE procedure checks; a violation rolls the revision back."""
    if not connection.get_execution_options().get("migration"):
        return
    violations: dict[tuple[str, str], int] = {}
    for table, _rowid, parent, _fkid in connection.exec_driver_sql("PRAGMA foreign_key_check"):
        violations[(table, parent)] = violations.get((table, parent), 0) + 1
    if violations:
        raise MigrationError("foreign key check failed, revision rolled back: " + "; ".join(
            f"{count} row(s) of {table} refer to missing {parent} rows"
            for (table, parent), count in sorted(violations.items())))


def on_checkin(dbapi_connection, connection_record) -> None:
    if dbapi_connection is not None:
        dbapi_connection.execute("PRAGMA foreign_keys=ON")


def install(engine: sa.engine.Engine, guard: Callable[[], None]) -> None:
    """Put the listeners on this engine (once)."""
    if sa.event.contains(engine, "begin", on_begin):
        return

    def on_do_connect(dialect, connection_record, cargs, cparams):
        if guard() == "memory":
            cargs[:] = [":memory:"]
            cparams["uri"] = False

    sa.event.listen(engine, "connect", on_connect)
    sa.event.listen(engine, "begin", on_begin)
    sa.event.listen(engine, "commit", on_commit)
    sa.event.listen(engine, "checkin", on_checkin)
    sa.event.listen(engine, "do_connect", on_do_connect)
