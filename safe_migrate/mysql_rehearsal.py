"""`db upgrade|downgrade --rehearse` on MySQL and MariaDB: a scratch database on the same
server, and the ALTER algorithm each statement of the rehearsal used.

DDL commits there, so no transaction can hold a rehearsal. Instead the database is copied
into `<db>_rehearsal_<random>`: each base table as the server itself defines it (SHOW CREATE
TABLE: indexes, foreign keys, charsets, AUTO_INCREMENT as they are), then its rows (INSERT ...
SELECT, foreign key checks off in that session), `alembic_version` and the package's
bookkeeping included. The pending revisions run there as a real run runs them, with its
checks: for the block the app's migration state points at the scratch database. The real
database is only read. The scratch database is dropped afterwards, whatever happened (a
failed revision, Ctrl-C). A database larger than MIGRATE_REHEARSAL_MAX_MB (default 1024,
0: no limit) is refused before anything is copied; one with views, triggers or sequences
(which a copy of its tables would not carry) too.

Each ALTER of the rehearsal is reported with the algorithm the server used: on MariaDB
(10.3+) it runs first with the session's `alter_algorithm` at INSTANT; where the server
answers that it cannot (errors 1845/1846, ER_ALTER_OPERATION_NOT_SUPPORTED[_REASON], which
change nothing), at NOCOPY, INPLACE, and finally COPY. Since each value means "this algorithm
or a cheaper one", the first one accepted is the cheapest the server can do: what a real
run's ALTER will do. MySQL has no such variable: there the algorithm is said to be unknown.
Which statements were ALTERs the server says too (its Com_alter_table, Com_create_index and
Com_drop_index counters), so an ALTER a revision writes as text is reported as well.
"""
from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import sqlalchemy as sa

from .errors import MigrationError
from .guards import is_bookkeeping, rows_not_in
from .progress import human_size
from .settings import MEGABYTE, megabytes
from .state import MigrateState

# The cheapest first; each means "this one or a cheaper one" (MariaDB's alter_algorithm).
ALGORITHMS = ("INSTANT", "NOCOPY", "INPLACE", "COPY")
# ER_ALTER_OPERATION_NOT_SUPPORTED, ER_ALTER_OPERATION_NOT_SUPPORTED_REASON: the algorithm
# asked for cannot do this ALTER; nothing was changed.
NOT_SUPPORTED = (1845, 1846)
# The server's counters of the statements that ALTER a table (CREATE/DROP INDEX are ALTERs).
ALTER_COUNTERS = ("Com_alter_table", "Com_create_index", "Com_drop_index")
# ER_NO_SUCH_THREAD: KILL of a session that has ended.
UNKNOWN_THREAD = 1094
DEFAULT_MAX_MB = 1024
REHEARSAL_MAX_MB = "MIGRATE_REHEARSAL_MAX_MB"

# What each algorithm means for the app while the ALTER runs ({} is the table).
EFFECTS = {
    "INSTANT": "changes only the table's definition (INSTANT): no copy, {} stays writable",
    "NOCOPY": "changes the table in place without copying its rows (NOCOPY): writes to {} go "
              "on, but for short locks at its start and end",
    "INPLACE": "rebuilds the table in place (INPLACE): writes to {} go on, but for short locks "
               "at its start and end",
    "COPY": "copies the table (COPY): writes to {} block during the copy",
    None: "algorithm not known (this server has no alter_algorithm: MySQL, or MariaDB before "
          "10.3)",
}


def max_bytes() -> int | None:
    """MIGRATE_REHEARSAL_MAX_MB as bytes (None: no limit)."""
    if os.environ.get(REHEARSAL_MAX_MB) is None:
        return DEFAULT_MAX_MB * MEGABYTE
    return megabytes(REHEARSAL_MAX_MB)


class ScratchState(MigrateState):
    """The app's migration state, on the scratch database: its URL, and engines whose
    statements are probed for their ALTER algorithm."""

    def __init__(self, state: MigrateState, url: sa.engine.URL, knows_algorithm: bool,
                 sessions: list[int]) -> None:
        self.__dict__.update(state.__dict__)
        self.scratch_url = url
        self.knows_algorithm = knows_algorithm
        self.sessions = sessions  # the server's ids of the connections made here

    @property
    def url(self) -> sa.engine.URL:
        return self.scratch_url

    def migration_engine(self, *args, **kwargs) -> sa.engine.Engine:
        engine = super().migration_engine(*args, **kwargs)
        AlgorithmProbe(self.knows_algorithm).install(engine)

        def remember_session(dbapi_connection, record) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("SELECT CONNECTION_ID()")
            self.sessions.append(cursor.fetchone()[0])
            cursor.close()

        sa.event.listen(engine, "connect", remember_session)
        return engine


@contextmanager
def on_a_scratch_database(state: MigrateState) -> Iterator[tuple[object, Callable]]:
    """A scratch copy of the app's database for the block's runs, which reach it through the
    app's migration state; yields the Place (empty: the run finds the database by its URL)
    and `remember()` (see rehearsal.rehearsal). The scratch databases are dropped at the end."""
    from .rehearsal import Place

    if state.bind is not None:
        raise MigrationError("--rehearse of a history with several databases is not "
                             "available on MySQL; nothing was changed")
    engine = state.engine
    scratches: list[str] = []
    sessions: list[int] = []  # the run's, on the scratch database
    try:
        with autocommit(engine) as conn:
            real = conn.exec_driver_sql("SELECT DATABASE()").scalar()
            tables = refuse_what_cannot_be_copied(conn, real)
            scratch = scratch_name(real)
            scratches.append(scratch)
            copy_database(conn, real, scratch, tables)
            knows = knows_alter_algorithm(conn)
        print(f"Rehearsing on {scratch}, a copy of {real} on the same server ({len(tables)} "
              f"tables); {real} is not changed")

        def remember():
            kept = scratch_name(real)
            scratches.append(kept)
            with autocommit(engine) as conn:
                copy_database(conn, scratch, kept, base_tables(conn, scratch))
            return lambda: rows_lost(engine, kept, scratch)

        app = state.app
        saved = app.extensions["migrate"]
        app.extensions["migrate"] = ScratchState(state, state.url.set(database=scratch), knows,
                                                 sessions)
        try:
            yield Place(), remember
        finally:
            app.extensions["migrate"] = saved
    finally:
        drop_databases(engine, scratches, sessions)
        engine.dispose()
    print(f"Rehearsal done: the scratch database {scratch} was dropped; {real} was not changed")


@contextmanager
def autocommit(engine: sa.engine.Engine) -> Iterator[sa.engine.Connection]:
    """A connection whose every statement commits: the copy's (DDL commits anyway)."""
    with engine.connect() as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT")


def scratch_name(real: str) -> str:
    """`<db>_rehearsal_<8 random hex digits>`, within MySQL's 64 characters."""
    suffix = f"_rehearsal_{secrets.token_hex(4)}"
    return real[:64 - len(suffix)] + suffix


def base_tables(conn, database: str) -> list[str]:
    """The database's base tables, as the server lists them."""
    return [name for (name,) in conn.execute(sa.text(
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = :db "
        "AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME"), {"db": database})]


def refuse_what_cannot_be_copied(conn, real: str) -> list[str]:
    """The real database's base tables, once it is known that a copy can rehearse on it:
    not larger than MIGRATE_REHEARSAL_MAX_MB, and no views, triggers or sequences (which a
    copy of the tables would leave out, or leave pointing at the real database)."""
    size = conn.execute(sa.text(
        "SELECT COALESCE(SUM(DATA_LENGTH + INDEX_LENGTH), 0) FROM information_schema.TABLES "
        "WHERE TABLE_SCHEMA = :db"), {"db": real}).scalar()
    limit = max_bytes()
    if limit is not None and size > limit:
        raise MigrationError(
            f"--rehearse refused: {real} holds {human_size(int(size))} of tables and indexes, "
            f"more than {REHEARSAL_MAX_MB} ({human_size(limit)}) allows a scratch copy on the "
            f"server; raise {REHEARSAL_MAX_MB} (0: no limit); nothing was copied or changed")
    others = [f"{name} ({kind.lower()})" for name, kind in conn.execute(sa.text(
        "SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = :db "
        "AND TABLE_TYPE <> 'BASE TABLE' UNION ALL SELECT TRIGGER_NAME, 'TRIGGER' FROM "
        "information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = :db ORDER BY 1"), {"db": real})]
    if others:
        raise MigrationError(
            f"--rehearse refused: {real} has {', '.join(others)}, which a scratch copy of its "
            "tables would not carry; nothing was copied or changed")
    return base_tables(conn, real)


def copy_database(conn, source: str, target: str, tables: list[str]) -> None:
    """Create `target` with `source`'s character set and collation, and copy the tables into
    it: each as the server defines it (SHOW CREATE TABLE, run in `target`), then its rows.
    Foreign key checks are off in this session only, so the order does not matter."""
    quote = conn.dialect.identifier_preparer.quote
    charset, collation = conn.execute(sa.text(
        "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM "
        "information_schema.SCHEMATA WHERE SCHEMA_NAME = :db"), {"db": source}).one()
    inspector = sa.inspect(conn)
    raw = conn.connection.cursor()  # the driver's own: the server's DDL is run as it is
    try:
        raw.execute(f"CREATE DATABASE {quote(target)} CHARACTER SET {quote(charset)} "
                    f"COLLATE {quote(collation)}")
        raw.execute("SET SESSION foreign_key_checks = 0")
        raw.execute(f"USE {quote(target)}")
        for table in tables:
            raw.execute(f"SHOW CREATE TABLE {quote(source)}.{quote(table)}")
            raw.execute(raw.fetchone()[1])  # CREATE TABLE `table` (...), in target
        for table in tables:
            names = [c["name"] for c in inspector.get_columns(table, schema=source)
                     if not c.get("computed")]  # a generated column computes itself
            into, out_of = (sa.table(table, *map(sa.column, names), schema=database)
                            for database in (target, source))
            conn.execute(sa.insert(into).from_select(names, sa.select(*out_of.c)))
    finally:
        with suppress(Exception):
            raw.execute("SET SESSION foreign_key_checks = 1")
            raw.execute(f"USE {quote(source)}")
        raw.close()


def knows_alter_algorithm(conn) -> bool:
    """True when the server has MariaDB's alter_algorithm (10.3 and later)."""
    try:
        conn.exec_driver_sql("SELECT @@SESSION.alter_algorithm").scalar()
    except sa.exc.DBAPIError:
        return False
    return True


def drop_databases(engine: sa.engine.Engine, names: list[str], sessions: list[int]) -> None:
    """Drop the rehearsal's scratch databases, on a connection of their own. The run's
    sessions are ended first: after Ctrl-C the server would go on with a statement its
    client no longer waits for (an ALTER copying a table), and the drop would wait for it."""
    if not names:
        return
    with engine.connect() as conn:
        raw = conn.connection.cursor()
        for session in sessions:
            try:
                raw.execute("KILL CONNECTION %s", (session,))
            except Exception as exc:
                if error_code(exc) != UNKNOWN_THREAD:  # it had ended: nothing to stop
                    raise
        quote = conn.dialect.identifier_preparer.quote
        for name in names:
            raw.execute(f"DROP DATABASE IF EXISTS {quote(name)}")
        raw.close()


def rows_lost(engine: sa.engine.Engine, kept: str, now: str) -> dict[str, int]:
    """{table: rows} of `kept`'s copy of an app table that the table in `now` no longer
    holds (on common columns); a table gone counts all its rows."""
    lost = {}
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        present = set(base_tables(conn, now))
        for table in base_tables(conn, kept):
            if is_bookkeeping(table):  # alembic_version and ours: no rows of the app
                continue
            columns = {c["name"] for c in inspector.get_columns(table, schema=kept)}
            common = (sorted(columns & {
                c["name"] for c in inspector.get_columns(table, schema=now)})
                if table in present else [])
            count = rows_not_in(conn, sa.table(table, schema=kept), sa.table(table, schema=now),
                                common)
            if count:
                lost[table] = count
    return lost


# --- the ALTER algorithm of each statement ---


class AlgorithmProbe:
    """Runs each statement of a rehearsal engine that may be an ALTER (DDL, and text a
    revision wrote) at the cheapest algorithm the server accepts, and logs the ALTERs with
    the algorithm and their time. The app's reads and writes (compiled SELECT, INSERT,
    UPDATE, DELETE) run as they are."""

    def __init__(self, knows_algorithm: bool) -> None:
        self.knows_algorithm = knows_algorithm
        self.log = logging.getLogger("alembic.runtime.migration")

    def install(self, engine: sa.engine.Engine) -> None:
        sa.event.listen(engine, "do_execute", self.execute)
        sa.event.listen(engine, "do_execute_no_params", self.execute_no_params)

    def execute_no_params(self, cursor, statement, context) -> bool:
        return self.execute(cursor, statement, None, context)

    def execute(self, cursor, statement, parameters, context) -> bool:
        """SQLAlchemy's do_execute event: True when the statement was run here."""
        compiled = getattr(context, "compiled", None)
        if compiled is not None and not getattr(context, "isddl", False):
            return False  # the app's rows: no ALTER
        probe = cursor.connection.cursor()  # the statement's cursor keeps its own result
        try:
            before = alter_count(probe)
            start = time.monotonic()
            algorithm = self.run(cursor, probe, statement, parameters)
            seconds = time.monotonic() - start
            if alter_count(probe) != before:
                table = table_of(compiled)
                effect = EFFECTS[algorithm].format(table or "the table")
                self.log.info("  %s: %s (%.2f s)", shortened(statement), effect, seconds)
        finally:
            probe.close()
        return True

    def run(self, cursor, probe, statement, parameters) -> str | None:
        """Run the statement at the cheapest algorithm the server accepts; return it (None:
        the server cannot be asked)."""
        if not self.knows_algorithm:
            cursor.execute(statement, parameters)
            return None
        try:
            for algorithm in ALGORITHMS:
                probe.execute("SET SESSION alter_algorithm = %s", (algorithm,))
                try:
                    cursor.execute(statement, parameters)
                except Exception as exc:
                    if error_code(exc) in NOT_SUPPORTED and algorithm != ALGORITHMS[-1]:
                        continue  # it changed nothing: try the next, dearer one
                    raise
                return algorithm
        finally:
            probe.execute("SET SESSION alter_algorithm = DEFAULT")
        return None  # not reached: COPY either runs or raises


def error_code(exc: BaseException) -> int | None:
    """The server's error number of a driver error (PyMySQL's args[0])."""
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def alter_count(probe) -> int:
    """How many ALTERs (of tables, and index creations and drops) this session has run."""
    probe.execute("SHOW SESSION STATUS WHERE Variable_name IN (%s, %s, %s)", ALTER_COUNTERS)
    return sum(int(value) for _, value in probe.fetchall())


def table_of(compiled) -> str | None:
    """The table a DDL construct alters (Alembic's AlterTable, SQLAlchemy's index DDL);
    None for a statement written as text."""
    element = getattr(compiled, "statement", None)
    name = getattr(element, "table_name", None)
    if name is None:
        table = getattr(getattr(element, "element", None), "table", None)
        name = getattr(table, "name", None)
    return name


def shortened(statement: str, width: int = 60) -> str:
    """The statement on one line, cut at `width` characters."""
    line = " ".join(statement.split())
    return line if len(line) <= width else line[:width].rstrip() + " ..."
