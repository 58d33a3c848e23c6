"""`db upgrade --rehearse` and `db downgrade --rehearse`: run the pending revisions for real
and throw the result away, reporting each revision (its time, every table's rows before and
after; on PostgreSQL the locks it took and the tables it rewrote).

SQLite: on a copy of the file in a temporary folder; the real file is only read, through
SQLite's backup API, so it stays byte-identical. PostgreSQL: in one transaction that is
rolled back (DDL is transactional there). Nothing is recorded and no snapshot taken.
"""
from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from .errors import MigrationError
from .snapshots import copy_database, rows_only_in


@contextmanager
def rehearsal(state) -> Iterator:
    """Where a rehearsal runs: a copy of the SQLite file, or one PostgreSQL transaction.
    Yields `remember()`, which keeps the rows as they are now and returns a function
    that counts, per table, the kept rows that are gone since."""
    if state.path is not None:
        with on_a_copy(state) as remember:
            yield remember
        print(f"Rehearsal done: {state.path} was not changed")
    elif state.url.get_backend_name() == "postgresql":
        with in_one_transaction(state) as remember:
            yield remember
        print("Rehearsal done: rolled back, the database was not changed")
    else:
        raise MigrationError("--rehearse works on SQLite files and PostgreSQL")


@contextmanager
def on_a_copy(state) -> Iterator:
    """Point the app's migration runs at a copy of its SQLite file for the block."""
    if not state.path.exists():
        raise MigrationError(f"no database at {state.path} to rehearse on")
    with tempfile.TemporaryDirectory(prefix="migrate-rehearsal-") as folder:
        copy = Path(folder) / state.path.name
        copy_database(state.path, copy, 0o600, state.settings.lock_timeout)
        print(f"Rehearsing on a copy of {state.path.name} in {folder}; {state.path} is not "
              "changed")
        state.rehearsal_path = copy  # what state.path, and so every engine, opens

        def remember():
            first = copy.with_name("first-run.db")
            copy_database(copy, first, 0o600, state.settings.lock_timeout)
            return lambda: rows_only_in(first, copy, state.settings.lock_timeout)

        try:
            yield remember
        finally:
            state.rehearsal_path = None


def rows_before_after(before: dict[str, int], after: dict[str, int]) -> str:
    """`company 10 -> 10, employee 1000 -> 0, firm - -> 3` (- : no such table)."""
    return ", ".join(f"{table} {before.get(table, '-')} -> {after.get(table, '-')}"
                     for table in sorted(set(before) | set(after))) or "no tables"


# --- PostgreSQL: DDL is transactional, so the rehearsal is one transaction, rolled back ---


@contextmanager
def in_one_transaction(state) -> Iterator:
    """Route the app's migration runs through one connection in one transaction for the
    block, and roll it back at the end, whatever happened."""
    budget = state.wait_budget()
    engine = state.migration_engine(budget)
    with state.lock(budget), engine.connect() as conn:
        conn.info["safe_migrate.budget"] = budget
        transaction = conn.begin()
        state.rehearsal_connection = conn
        print("Rehearsing in one transaction, rolled back at the end; the database is not "
              "changed")

        def remember():
            from .runner import all_rows  # runner imports this module

            tables = list(all_rows(conn))
            keep_rows(conn, tables)
            return lambda: rows_lost(conn, tables)

        try:
            yield remember
        finally:
            state.rehearsal_connection = None
            transaction.rollback()
    engine.dispose()


def keep_rows(conn, tables) -> None:
    """Keep a copy of each table's rows in a temporary table (dropped at the rollback)."""
    for table in tables:
        conn.exec_driver_sql(f'CREATE TEMP TABLE "rehearsal_{table}" AS SELECT * FROM "{table}"')


def rows_lost(conn, tables) -> dict[str, int]:
    """{table: rows} kept by keep_rows that the table no longer holds (on common columns)."""
    inspector = sa.inspect(conn)
    lost = {}
    for table in tables:
        now = {c["name"] for c in inspector.get_columns(table)} if inspector.has_table(table) else set()
        kept = [r[0] for r in conn.exec_driver_sql(
            "SELECT attname FROM pg_attribute WHERE attrelid = %(t)s::regclass AND attnum > 0 "
            "AND NOT attisdropped ORDER BY attnum", {"t": f'"rehearsal_{table}"'})]
        common = ", ".join(f'"{c}"' for c in kept if c in now)
        query = (f'SELECT count(*) FROM (SELECT {common} FROM "rehearsal_{table}" EXCEPT '
                 f'SELECT {common} FROM "{table}") AS gone' if common
                 else f'SELECT count(*) FROM "rehearsal_{table}"')
        count = conn.exec_driver_sql(query).scalar()
        if count:
            lost[table] = count
    return lost


# PostgreSQL's table lock modes, weakest first.
LOCK_MODES = ["AccessShareLock", "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock",
              "ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"]


class LockWatch:
    """PostgreSQL: for each table a revision's statements name, the strongest lock the
    transaction holds on it and since when, and the tables it rewrote (their relfilenode
    changed). In the one rehearsal transaction, earlier revisions' locks are still held, so
    a lock counts for the revisions whose statements name its table."""

    def __init__(self, conn, ignore=()) -> None:
        self.conn = conn
        self.ignore = set(ignore)  # our bookkeeping tables
        self.first_held: dict[str, tuple[str, float]] = {}
        self.files = self.relfilenodes()
        self.start = time.monotonic()
        sa.event.listen(conn, "after_cursor_execute", self.after_statement)

    def relfilenodes(self) -> dict[str, int]:
        return dict(self.conn.exec_driver_sql(
            "SELECT relname, relfilenode FROM pg_class WHERE relkind = 'r' "
            "AND relnamespace = current_schema()::regnamespace").all())

    @staticmethod
    def held_locks(dbapi_connection) -> list[tuple[str, str]]:
        with dbapi_connection.cursor() as raw:  # the driver's own: no events, no recursion
            raw.execute(
                "SELECT c.relname, l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                " WHERE l.pid = pg_backend_pid() AND l.granted AND c.relkind IN ('r', 'p')"
                " AND c.relnamespace = current_schema()::regnamespace")
            return raw.fetchall()

    def after_statement(self, conn, cursor, statement, parameters, context, executemany) -> None:
        named = set(re.findall(r"\w+", statement.lower()))
        for table, mode in self.held_locks(cursor.connection):
            if table not in named or table in self.ignore:
                continue
            held, since = self.first_held.get(table, (None, time.monotonic()))
            if held is None or LOCK_MODES.index(mode) > LOCK_MODES.index(held):
                self.first_held[table] = (mode, since)

    def report(self) -> list[str]:
        """The revision's lines: its locks, held until it ended, and its rewrites."""
        sa.event.remove(self.conn, "after_cursor_execute", self.after_statement)
        end = time.monotonic()
        locks = ", ".join(f"{table} {mode} ({end - since:.2f} s)"
                          for table, (mode, since) in sorted(self.first_held.items()))
        files = self.relfilenodes()
        rewritten = sorted(t for t, node in files.items() if t in self.files and self.files[t] != node)
        return [f"  locks: {locks or 'none'}",
                f"  rewritten: {', '.join(rewritten) or 'none'}"]
