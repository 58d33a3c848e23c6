"""SQLite on a migration engine: a real transaction per revision, foreign keys that hold
through table copies, and no database file created by accident.

pysqlite opens transactions itself, late, and commits before DDL, so a failed batch
migration would leave a half-copied table behind. SQLAlchemy's documented recipe: turn the
driver's handling off and emit BEGIN ourselves. A migration run's write transactions
(transactions.writing) BEGIN IMMEDIATE, taking SQLite's write lock up front, so a revision
never fails half-way for want of it; every read begins as SQLite does by default. The listeners go on this package's own
engines (connections.py), never on the app's.
"""
from __future__ import annotations

import sqlite3
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from .errors import MigrationError
from .locks import WaitBudget
from .transactions import WRITING


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


def missing_file_guard(path: Path, missing: str) -> Callable[[], str | None]:
    """What connecting does when the SQLite file is missing (see
    connections.migration_engine): a typo in the URL must not quietly create and migrate
    an empty database. Each engine says so once, however often it connects."""
    said = set()

    def say(line: str) -> None:
        if line not in said:
            said.add(line)
            print(line)

    def guard() -> str | None:
        if path.exists():
            return None
        if missing == "create":
            say(f"Creating new database at {path}")
            return None
        if missing == "compare with empty":
            # The tutorial runs `db migrate` before any database exists: compare the models
            # with an empty database in memory, and leave the file to `db upgrade`.
            say(f"No database at {path} yet: comparing the models with an empty database")
            return "memory"
        raise MigrationError(
            f"no database at {path} (check DATABASE_URL); only `db upgrade` creates one")

    return guard


def on_connect(dbapi_connection, connection_record) -> None:
    dbapi_connection.isolation_level = None
    dbapi_connection.execute("PRAGMA foreign_keys=ON")


def foreign_key_violations(connection) -> Counter:
    """Counter of (table, parent, the missing parent's key) for every row whose foreign key
    finds no parent row, as SQLite's own `PRAGMA foreign_key_check` reports them. A row is
    told by the key it refers to, not by its rowid, which a table copy may change; the key
    is None for a WITHOUT ROWID table's rows, which the pragma does not point to."""
    found: Counter = Counter()
    rows = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    for table, parent, fkid in dict.fromkeys((t, p, f) for t, _rowid, p, f in rows):
        keys = None
        if all(r[1] is not None for r in rows if (r[0], r[3]) == (table, fkid)):
            keys = referring_keys(connection, table, fkid)
        if keys is None:
            found[(table, parent, None)] += sum((r[0], r[3]) == (table, fkid) for r in rows)
        else:
            found.update((table, parent, tuple(key)) for key in keys)
    return found


def referring_keys(connection, table: str, fkid: int) -> list | None:
    """The values of foreign key `fkid`'s columns in each row of `table` that the pragma
    reports for it, in one query (None if the table's columns take every name of the
    rowid)."""
    quote = connection.dialect.identifier_preparer.quote
    columns = [row[0] for row in connection.exec_driver_sql(
        'SELECT "from" FROM pragma_foreign_key_list(?) WHERE id = ? ORDER BY seq',
        (table, fkid))]
    names = {row[0].lower() for row in connection.exec_driver_sql(
        "SELECT name FROM pragma_table_xinfo(?)", (table,))}
    # SQLite's names for the rowid, the first that no column of the table has taken
    alias = next((name for name in ("rowid", "_rowid_", "oid") if name not in names), None)
    if alias is None:
        return None
    return connection.exec_driver_sql(
        f"SELECT {', '.join(quote(c) for c in columns)} FROM {quote(table)} WHERE {alias} IN "
        "(SELECT rowid FROM pragma_foreign_key_check(?) WHERE fkid = ?)", (table, fkid)).all()


def describe_violations(violations: Counter) -> str:
    by_table: Counter = Counter()
    for (table, parent, _key), count in violations.items():
        by_table[(table, parent)] += count
    return "; ".join(f"{count} row(s) of {table} refer to missing {parent} rows"
                     for (table, parent), count in sorted(by_table.items()))


class RunListeners:
    """A migration run's transactions: BEGIN IMMEDIATE within the run's wait budget, foreign
    keys unenforced during the revision (a batch copy's DROP TABLE of a parent table would
    delete or block on its child rows) and checked before it commits, as SQLite's documented
    ALTER TABLE procedure does. Violations that were there before the run are not the
    revision's: they are said once, and only new ones roll a revision back."""

    def __init__(self, budget: WaitBudget) -> None:
        self.budget = budget
        self.known: Counter | None = None  # violations before this revision
        self.writing = False  # the open transaction is a run's write (transactions.WRITING)

    def on_begin(self, connection) -> None:
        # A read (SQLAlchemy 2 begins one at a connection's first statement) begins as
        # SQLite does by default: it must not wait for, or hold, the write lock.
        self.writing = connection.info.get(WRITING, False)
        if not self.writing:
            on_plain_begin(connection)
            return
        # SQLite ignores this pragma inside a transaction, so it goes before BEGIN.
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        # SQLite's busy timeout is per statement; the run's waits together get one timeout.
        connection.exec_driver_sql(f"PRAGMA busy_timeout = {self.budget.milliseconds_left()}")
        with self.budget.spend():
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        if self.known is None:
            self.known = foreign_key_violations(connection)
            if self.known:
                print(f"NOTE: the database already breaks foreign keys: "
                      f"{describe_violations(self.known)} (`db check` lists them); a revision "
                      "fails only for rows it leaves without a parent", file=sys.stderr)

    def on_commit(self, connection) -> None:
        if not self.writing:
            return
        now = foreign_key_violations(connection)
        new = now - self.known  # the rows this revision left without a parent
        if new:
            raise MigrationError("foreign key check failed, revision rolled back: "
                                 + describe_violations(new))
        self.known = now


def on_plain_begin(connection) -> None:
    connection.exec_driver_sql("BEGIN")


def on_checkin(dbapi_connection, connection_record) -> None:
    if dbapi_connection is not None:
        dbapi_connection.execute("PRAGMA foreign_keys=ON")


def install(engine: sa.engine.Engine, guard: Callable[[], str | None] | None,
            budget: WaitBudget | None) -> None:
    """Put the listeners on one of this package's engines: a migration run's with `budget`,
    else a reader's."""
    def on_do_connect(dialect, connection_record, cargs, cparams):
        if guard is not None and guard() == "memory":
            cargs[:] = [":memory:"]
            cparams["uri"] = False

    sa.event.listen(engine, "connect", on_connect)
    sa.event.listen(engine, "do_connect", on_do_connect)
    if budget is None:
        sa.event.listen(engine, "begin", on_plain_begin)
        return
    run = RunListeners(budget)
    sa.event.listen(engine, "begin", run.on_begin)
    sa.event.listen(engine, "commit", run.on_commit)
    sa.event.listen(engine, "checkin", on_checkin)
