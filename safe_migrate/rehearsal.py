"""`db upgrade --rehearse` and `db downgrade --rehearse`: run the pending revisions for real
and throw the result away, reporting each revision (its time, every table's rows before and
after; on PostgreSQL the locks it took and the tables it rewrote).

SQLite: on a copy of the file in a temporary folder; the real file is only read, through
SQLite's backup API, so it stays byte-identical. PostgreSQL: in one transaction that is
rolled back (DDL is transactional there). MySQL and MariaDB: on a scratch database copied
from the real one and dropped afterwards (mysql_rehearsal.py). Nothing is recorded and no
snapshot taken.
"""
from __future__ import annotations

import functools
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import sqlalchemy as sa

from . import guards
from .errors import MigrationError
from .guards import Table
from .snapshots import copy_database, rows_only_in


class Place(NamedTuple):
    """Where a rehearsal's runs go, handed to env.py in Alembic's config.attributes (the
    runner reads it there): a copy of the SQLite file, or the connection of the one
    PostgreSQL transaction, with its wait budget."""
    path: Path | None = None
    connection: sa.engine.Connection | None = None
    budget: object | None = None  # locks.WaitBudget


@contextmanager
def rehearsal(state) -> Iterator[tuple[Place, Callable]]:
    """Where a rehearsal runs: a copy of the SQLite file, one PostgreSQL transaction, or a
    scratch MySQL database.
    Yields the Place and `remember()`, which keeps the rows as they are now and returns a
    function that counts, per table, the kept rows that are gone since."""
    path = state.path
    if path is not None:
        with on_a_copy(path, state.settings.lock_timeout) as where:
            yield where
        print(f"Rehearsal done: {path} was not changed")
    elif state.url.get_backend_name() == "postgresql":
        with in_one_transaction(state) as where:
            yield where
        print("Rehearsal done: rolled back, the database was not changed")
    elif state.url.get_backend_name() == "mysql":  # DDL commits there: mysql_rehearsal.py
        from .mysql_rehearsal import on_a_scratch_database

        with on_a_scratch_database(state) as where:
            yield where
    else:
        raise MigrationError("--rehearse works on SQLite files, PostgreSQL and MySQL")


@contextmanager
def on_a_copy(path: Path, timeout: float) -> Iterator[tuple[Place, Callable]]:
    """A copy of the SQLite file, for the block's runs."""
    if not path.exists():
        raise MigrationError(f"no database at {path} to rehearse on")
    with tempfile.TemporaryDirectory(prefix="migrate-rehearsal-") as folder:
        copy = Path(folder) / path.name
        copy_database(path, copy, 0o600, timeout)
        print(f"Rehearsing on a copy of {path.name} in {folder}; {path} is not changed")

        def remember():
            first = copy.with_name("first-run.db")
            copy_database(copy, first, 0o600, timeout)
            return lambda: rows_only_in(first, copy, timeout)

        yield Place(path=copy), remember


def rows_before_after(before: dict[str, int], after: dict[str, int]) -> str:
    """`company 10 -> 10, employee 1000 -> 0, firm - -> 3` (- : no such table)."""
    return ", ".join(f"{table} {before.get(table, '-')} -> {after.get(table, '-')}"
                     for table in sorted(set(before) | set(after))) or "no tables"


# --- PostgreSQL: DDL is transactional, so the rehearsal is one transaction, rolled back ---


@contextmanager
def in_one_transaction(state) -> Iterator:
    """Route the app's migration runs through one connection in one transaction for the
    block, and roll it back at the end, whatever happened. That transaction cannot commit
    (refuse_commit), and the sequences it advanced are put back after the rollback."""
    budget = state.wait_budget()
    engine = state.migration_engine(budget)
    with state.lock(budget), engine.connect() as conn:
        transaction = conn.begin()
        refuse_commit(conn)
        sequences = sequence_values(conn)
        print("Rehearsing in one transaction, rolled back at the end; the database is not "
              "changed")

        def remember():
            kept = keep_rows(conn)
            return lambda: rows_lost(conn, kept)

        failed = True
        try:
            yield Place(connection=conn, budget=budget), remember
            failed = False
        finally:
            transaction.rollback()
            put_back_sequences(conn, sequences, failed)
    engine.dispose()


# The SQLSTATE of a COMMIT the rehearsal's transaction refused (a code of our own).
COMMIT_REFUSED = "SMR01"


def refuse_commit(conn) -> None:
    """Make any COMMIT of the rehearsal's transaction fail, so it rolls back instead: a
    deferred constraint trigger, which PostgreSQL fires at COMMIT, raises. A COMMIT a
    revision sends as SQL (op.execute("COMMIT")) is refused by the server itself, whatever
    its spelling. Everything is temporary and goes with the rollback."""
    with conn.connection.cursor() as raw:  # the driver's own, in the rehearsal's transaction
        raw.execute("CREATE FUNCTION pg_temp.rehearsal_refuses_commit() RETURNS trigger "
                    "LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION USING ERRCODE = '"
                    + COMMIT_REFUSED + "', MESSAGE = 'a rehearsal never commits'; END $$")
        raw.execute("CREATE TEMP TABLE rehearsal_commit_guard (x int)")
        raw.execute("CREATE CONSTRAINT TRIGGER rehearsal_commit_guard AFTER INSERT ON "
                    "rehearsal_commit_guard DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
                    "EXECUTE FUNCTION pg_temp.rehearsal_refuses_commit()")
        raw.execute("INSERT INTO rehearsal_commit_guard VALUES (1)")


def never_commits(run, connection, migration_context, label: str):
    """`run` (a revision's upgrade or downgrade, in the rehearsal's transaction), kept in
    that transaction: its autocommit_block() runs its statements there (an index without
    CONCURRENTLY; one that cannot run in a transaction is refused), and it is refused with
    one line before it leaves: a switch of the connection's isolation level or a commit()
    raises before it reaches the server (SQLAlchemy's events), and a COMMIT statement fails
    in the server (refuse_commit), which rolls everything back."""
    def refusal(why: str) -> MigrationError:
        return MigrationError(
            f"{label}: {why}, which the one transaction of a rehearsal cannot hold; not "
            "rehearsed, rolled back, the database was not changed")

    @contextmanager
    def autocommit_block():
        # Its statements run in the rehearsal's transaction instead (see in_the_transaction);
        # one that no transaction can hold fails there, and is refused below.
        impl = migration_context.impl
        impl._exec = functools.partial(in_the_transaction, impl._exec)  # as postgres.py does
        logging.getLogger("alembic.runtime.migration").info(
            "  %s: its autocommit_block runs in the rehearsal's transaction (an index there "
            "without CONCURRENTLY)", label)
        try:
            yield
        finally:
            del impl._exec

    def isolation(conn, options) -> None:
        if "isolation_level" in options:
            raise refusal("it changes the connection's isolation level")

    def commit(conn) -> None:
        raise refusal("it commits its transaction")

    def guarded(**kwargs):
        migration_context.autocommit_block = autocommit_block
        sa.event.listen(connection, "set_connection_execution_options", isolation)
        sa.event.listen(connection, "commit", commit)
        try:
            return run(**kwargs)
        except sa.exc.DBAPIError as exc:
            if getattr(exc.orig, "pgcode", None) == COMMIT_REFUSED:
                raise refusal("it commits its transaction (a COMMIT statement)") from None
            if getattr(exc.orig, "pgcode", None) == ACTIVE_SQL_TRANSACTION:
                raise refusal("it runs a statement that cannot run inside a transaction "
                              "(in its autocommit_block)") from None
            raise
        finally:
            sa.event.remove(connection, "commit", commit)
            sa.event.remove(connection, "set_connection_execution_options", isolation)
            del migration_context.autocommit_block  # the class's method again
    return guarded


# PostgreSQL's SQLSTATE for a statement that cannot run inside a transaction block.
ACTIVE_SQL_TRANSACTION = "25001"


def in_the_transaction(execute, construct, *args, **kwargs):
    """Alembic's impl._exec in a rehearsal's autocommit_block: an index created or dropped
    CONCURRENTLY (op.create_index/drop_index(..., postgresql_concurrently=True)), which no
    transaction can hold, is created or dropped plainly; the rest runs as it is."""
    from sqlalchemy.schema import CreateIndex, DropIndex

    if not isinstance(construct, (CreateIndex, DropIndex)):
        return execute(construct, *args, **kwargs)
    options = construct.element.dialect_options["postgresql"]
    concurrently = options["concurrently"]
    options["concurrently"] = False
    try:
        return execute(construct, *args, **kwargs)
    finally:
        options["concurrently"] = concurrently


# Every sequence of the app, in every schema: its last value (None: never used).
SEQUENCES = """
SELECT schemaname, sequencename, last_value, start_value FROM pg_sequences
WHERE schemaname NOT IN ('pg_catalog', 'information_schema') AND left(schemaname, 7) <> 'pg_temp'
"""


def sequence_values(conn) -> dict[Table, tuple[int, bool]]:
    """{(schema, sequence): (value, is_called)}, as setval takes them back."""
    with conn.connection.cursor() as raw:  # the driver's own: no events
        raw.execute(SEQUENCES)
        return {(schema, name): (start if last is None else last, last is not None)
                for schema, name, last, start in raw.fetchall()}


def put_back_sequences(conn, before: dict[Table, tuple[int, bool]], failed: bool) -> None:
    """After the rollback: set back the sequences the rehearsal advanced (nextval is not
    transactional), and say so; if that fails, say they moved (unless the rehearsal's own
    error is already on its way)."""
    from psycopg2 import sql

    now = sequence_values(conn)
    moved = sorted(key for key, value in before.items() if now.get(key, value) != value)
    if not moved:
        return
    names = ", ".join(".".join(key) for key in moved)
    try:
        with conn.begin(), conn.connection.cursor() as raw:
            for key in moved:
                value, called = before[key]
                raw.execute("SELECT setval(%(name)s::regclass, %(value)s, %(called)s)",
                            {"name": sql.Identifier(*key).as_string(raw), "value": value,
                             "called": called})
    except sa.exc.DBAPIError as exc:
        if not failed:
            raise MigrationError(f"rolled back, but the sequences the rehearsal advanced ({names}) "
                                 f"could not be set back: {exc.orig}") from None
        return
    print(f"Sequences the rehearsal advanced, set back: {names}")


class Kept(NamedTuple):
    """A table whose rows keep_rows copied, and where to."""
    table: Table
    columns: list[str]
    copy: str  # rehearsal_<n>, a temporary table


def keep_rows(conn) -> list[Kept]:
    """Keep a copy of each table's rows, in every schema, in a temporary table numbered
    `rehearsal_<n>` (dropped at the rollback): no name of the app's reaches the copy's."""
    from psycopg2 import sql

    inspector = sa.inspect(conn)
    kept = []
    with conn.connection.cursor() as raw:  # the driver's own, in the rehearsal's transaction
        for n, (schema, name) in enumerate(guards.app_tables(conn)):
            copy = f"rehearsal_{n}"
            raw.execute(sql.SQL("CREATE TEMP TABLE {} AS SELECT * FROM {}.{}").format(
                sql.Identifier(copy), sql.Identifier(schema), sql.Identifier(name)))
            columns = [c["name"] for c in inspector.get_columns(name, schema=schema)]
            kept.append(Kept((schema, name), columns, copy))
    return kept


def rows_lost(conn, kept: list[Kept]) -> dict[str, int]:
    """{table: rows} kept by keep_rows that the table no longer holds (on common columns)."""
    inspector = sa.inspect(conn)
    lost = {}
    for (schema, name), columns, copy in kept:
        now = ({c["name"] for c in inspector.get_columns(name, schema=schema)}
               if inspector.has_table(name, schema=schema) else set())
        count = guards.rows_not_in(conn, sa.table(copy, schema="pg_temp"),
                                   sa.table(name, schema=schema),
                                   [c for c in columns if c in now])
        if count:
            lost[guards.label(conn, (schema, name))] = count
    return lost


# PostgreSQL's table lock modes, weakest first.
LOCK_MODES = ["AccessShareLock", "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock",
              "ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"]

# Each table of the app, in every schema: its oid, schema, name, data file, and where its
# catalog rows are (a statement that changes its definition writes new row versions).
TABLE_FACTS = """
SELECT c.oid, n.nspname, c.relname, c.relfilenode, concat_ws(' ', c.ctid::text,
  (SELECT string_agg(a.ctid::text, ',' ORDER BY a.attnum) FROM pg_attribute a
   WHERE a.attrelid = c.oid),
  (SELECT string_agg(k.ctid::text, ',' ORDER BY k.oid) FROM pg_constraint k
   WHERE k.conrelid = c.oid),
  (SELECT string_agg(i.ctid::text, ',' ORDER BY i.indexrelid) FROM pg_index i
   WHERE i.indrelid = c.oid))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND left(n.nspname, 8) <> 'pg_toast' AND left(n.nspname, 7) <> 'pg_temp'
"""
# The table locks this session holds.
HELD_LOCKS = """
SELECT l.relation, l.mode FROM pg_locks l
WHERE l.pid = pg_backend_pid() AND l.granted AND l.locktype = 'relation'
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


class Facts(NamedTuple):
    """What the catalog says of the app's tables at one moment."""
    tables: dict[int, tuple[Table, int, str]]  # oid: ((schema, name), relfilenode, rows' places)
    locks: dict[int, set[str]]  # oid: the modes this session holds on it

    @classmethod
    def read(cls, dbapi_connection) -> Facts:
        with dbapi_connection.cursor() as raw:  # the driver's own: no events, no recursion
            raw.execute(TABLE_FACTS)
            tables = {oid: ((schema, name), node, places)
                      for oid, schema, name, node, places in raw.fetchall()}
            raw.execute(HELD_LOCKS)
            locks: dict[int, set[str]] = {}
            for oid, mode in raw.fetchall():
                locks.setdefault(oid, set()).add(mode)
        return cls(tables, locks)


def strongest(modes: set[str]) -> str:
    return max(modes, key=LOCK_MODES.index)


class LockWatch:
    """PostgreSQL: for each table a revision's statements touched, in any schema, the
    strongest lock the transaction holds on it and since when, and the tables it rewrote
    (their data file changed). Which tables a statement touched is read from the catalog
    after it, against the moment before: those it took a new or stronger lock on, and those
    whose definition (pg_class, pg_attribute, pg_constraint, pg_index rows) or data file it
    changed. In the one rehearsal transaction, earlier revisions' locks are still held: a
    revision that only reads or writes rows of a table an earlier one already locked does not
    show that lock."""

    def __init__(self, conn, ignore=()) -> None:
        self.conn = conn
        self.ignore = set(ignore)  # our bookkeeping tables
        self.first_held: dict[Table, tuple[str, float]] = {}
        self.start_facts = self.last = Facts.read(conn.connection)
        sa.event.listen(conn, "after_cursor_execute", self.after_statement)

    def after_statement(self, conn, cursor, statement, parameters, context, executemany) -> None:
        before, now = self.last, Facts.read(cursor.connection)
        self.last = now
        for oid, modes in now.locks.items():
            fact = now.tables.get(oid) or before.tables.get(oid)  # before: it was dropped
            if fact is None or fact[0][1] in self.ignore:
                continue
            took = modes - before.locks.get(oid, set())
            changed = before.tables.get(oid, (None, None, None))[1:] != now.tables.get(
                oid, (None, None, None))[1:]
            if not (took or changed):
                continue
            table, mode = fact[0], strongest(modes)
            held, since = self.first_held.get(table, (None, time.monotonic()))
            if held is None or LOCK_MODES.index(mode) > LOCK_MODES.index(held):
                self.first_held[table] = (mode, since)

    def report(self) -> list[str]:
        """The revision's lines: its locks, held until it ended, and its rewrites."""
        sa.event.remove(self.conn, "after_cursor_execute", self.after_statement)
        end = time.monotonic()
        name = functools.partial(guards.label, self.conn)
        locks = ", ".join(f"{name(table)} {mode} ({end - since:.2f} s)"
                          for table, (mode, since) in sorted(self.first_held.items(),
                                                             key=lambda i: name(i[0])))
        start, now = self.start_facts.tables, Facts.read(self.conn.connection).tables
        rewritten = sorted(name(now[oid][0]) for oid in now
                           if oid in start and start[oid][1] != now[oid][1]
                           and now[oid][0][1] not in self.ignore)
        return [f"  locks: {locks or 'none'}",
                f"  rewritten: {', '.join(rewritten) or 'none'}"]
