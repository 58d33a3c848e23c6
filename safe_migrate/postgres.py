"""PostgreSQL revisions that cannot pile up a lock queue.

An ALTER TABLE waiting for its ACCESS EXCLUSIVE lock behind one long transaction blocks
every later query on the table. So each revision's transaction sets a short `lock_timeout`
(MIGRATE_PG_LOCK_TIMEOUT, 2 s) and, optionally, a `statement_timeout`; when the lock timeout
fires, the revision's work is rolled back to a savepoint taken at its start (which releases
every lock it took) and tried again after a pause, a bounded number of times
(MIGRATE_PG_LOCK_RETRIES), each retry printed with the sessions that held the table.
"""
from __future__ import annotations

import functools
import select
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from .errors import MigrationError, interrupt_in
from .settings import Settings

LOCK_NOT_AVAILABLE = "55P03"


def install(engine: sa.engine.Engine, settings: Settings) -> None:
    """Give each transaction of a migration run's engine (one per revision) the timeouts,
    as bound values of set_config (local to the transaction)."""
    def on_begin(connection) -> None:
        if not in_transaction_mode(connection):
            return  # AUTOCOMMIT (autocommit_block): OutsideTransaction sets them
        with connection.connection.cursor() as raw:  # the driver's own: not a revision's
            raw.execute("SELECT set_config('lock_timeout', %(ms)s, true)",
                        {"ms": milliseconds(settings.pg_lock_timeout)})
            if settings.pg_statement_timeout:
                raw.execute("SELECT set_config('statement_timeout', %(ms)s, true)",
                            {"ms": milliseconds(settings.pg_statement_timeout)})

    sa.event.listen(engine, "begin", on_begin)


@contextmanager
def interruptible() -> Iterator[None]:
    """While a migration runs, Ctrl-C stops the statement the server is running instead of
    waiting for it to end (a CREATE INDEX on a big table, a wait for a lock): psycopg2's
    documented way, a wait callback (`extras.wait_select`) that cancels the statement on
    the server. Unlike wait_select, the Ctrl-C is raised once the server has cancelled,
    not swallowed, so the run stops and says what stays. psycopg2's callback is
    process-wide: the one before is put back when the run ends."""
    from psycopg2 import extensions

    before = extensions.get_wait_callback()
    extensions.set_wait_callback(wait_cancelling_on_interrupt)
    try:
        yield
    finally:
        extensions.set_wait_callback(before)


def wait_cancelling_on_interrupt(conn) -> None:
    """psycopg2.extras.wait_select, raising the KeyboardInterrupt after the cancel."""
    from psycopg2 import extensions

    interrupt = None
    while True:
        try:
            state = conn.poll()
            if state == extensions.POLL_OK:
                break
            if state == extensions.POLL_READ:
                select.select([conn.fileno()], [], [])
            elif state == extensions.POLL_WRITE:
                select.select([], [conn.fileno()], [])
            else:
                raise conn.OperationalError(f"bad state from poll: {state}")
        except KeyboardInterrupt as exc:
            conn.cancel()  # the server ends the statement; poll() then raises its error
            interrupt = exc
        except extensions.QueryCanceledError:
            if interrupt is None:
                raise
            raise interrupt from None
    if interrupt is not None:  # the statement had ended before the cancel reached it
        raise interrupt


def in_transaction_mode(connection) -> bool:
    """The driver opens a transaction for the connection's statements (not AUTOCOMMIT)."""
    return not connection.connection.dbapi_connection.autocommit


def server_in_transaction(dbapi_connection) -> bool:
    """The server says this session is inside a transaction block (a COMMIT statement sent
    as SQL ends it without the driver or SQLAlchemy knowing)."""
    from psycopg2.extensions import TRANSACTION_STATUS_IDLE

    return dbapi_connection.info.transaction_status != TRANSACTION_STATUS_IDLE


def milliseconds(seconds: float) -> str:
    """A setting in whole milliseconds; Settings keeps every timeout at 1 ms or more, so
    none becomes 0, which PostgreSQL reads as no limit at all."""
    return f"{round(seconds * 1000)}ms"


def is_lock_timeout(exc: BaseException) -> bool:
    return getattr(getattr(exc, "orig", None), "pgcode", None) == LOCK_NOT_AVAILABLE


def retrying(run, connection, settings: Settings, label: str, migration_context):
    """`run` (a revision's upgrade or downgrade), retried when its lock timeout fires. Its
    autocommit_block() runs outside the transaction, each statement retried on its own
    (OutsideTransaction); once work has committed, the revision is no longer retried whole."""
    def run_until_locked(**kwargs):
        for attempt in range(settings.pg_lock_retries + 1):
            outside = OutsideTransaction(connection, settings, label)
            # Not `with begin_nested()`: the app's db.session, joined to this connection in a
            # revision (runner.app_session_on), may release the savepoint with its commit;
            # the revision goes on in its transaction, and only a lock timeout while the
            # savepoint still stands can be retried from it.
            savepoint = connection.begin_nested()
            outside.savepoint = savepoint
            try:
                with outside.installed(migration_context):
                    result = run(**kwargs)
            except BaseException as exc:
                standing = savepoint.is_active
                if standing and server_in_transaction(connection.connection.dbapi_connection):
                    savepoint.rollback()
                if outside.left:  # no retry of the whole: work may have committed
                    interrupt = interrupt_in(exc)
                    if interrupt is not None:  # Ctrl-C: runner.Progress says what stays
                        interrupt.committed_statements = list(outside.committed)
                        raise interrupt from None
                    raise MigrationError(outside.failure(exc)) from None
                if not (standing and isinstance(exc, sa.exc.OperationalError)
                        and is_lock_timeout(exc)):
                    raise
                held_by = blockers(connection, exc.statement or "")
                if attempt == settings.pg_lock_retries:
                    raise MigrationError(
                        f"{label}: could not lock a table within {settings.pg_lock_timeout:g} s "
                        f"(MIGRATE_PG_LOCK_TIMEOUT), {attempt + 1} times; held by {held_by}; "
                        "that revision was rolled back") from None
                pause = backoff(attempt)
                print(f"{label}: waited {settings.pg_lock_timeout:g} s for a lock held by "
                      f"{held_by}; rolled back, retrying in {pause:g} s "
                      f"({attempt + 1} of {settings.pg_lock_retries})", file=sys.stderr)
                time.sleep(pause)  # the backoff itself, not a synchronisation
                continue
            if savepoint.is_active:
                savepoint.commit()
            return result
    return run_until_locked


def backoff(attempt: int) -> float:
    """Seconds to wait before retry number attempt + 1."""
    return min(0.5 * 2 ** attempt, 10.0)


class OutsideTransaction:
    """One attempt at a revision that may leave its transaction. Alembic's
    `autocommit_block()` commits the work so far and runs its statements in AUTOCOMMIT; here
    those statements get session-level timeouts (the transaction-local ones mean nothing
    outside a transaction), each is retried on a lock timeout, with an INVALID index left by
    a failed concurrent build dropped before it runs again, and every statement that
    committed is noted, for a failure message that says exactly what stays."""

    def __init__(self, connection, settings: Settings, label: str) -> None:
        self.connection = connection
        self.settings = settings
        self.label = label
        self.savepoint = None
        self.in_transaction: list[str] = []  # statements run, not yet committed
        self.committed: list[str] = []  # statements that committed, in order
        self.outside = False  # in the autocommit block now
        self.left = False  # it has left its transaction (autocommit_block, a COMMIT)
        self.quiet = False  # our own statements run: not the revision's

    def noted(self, conn, cursor, statement, parameters, context, executemany) -> None:
        """after_cursor_execute: a statement of the revision has run. If it ended the
        transaction (a COMMIT sent as SQL), everything so far stays: stop there."""
        if self.quiet:
            return
        (self.committed if self.outside else self.in_transaction).append(one_line(statement))
        if not self.outside and not server_in_transaction(cursor.connection):
            self.committed += self.in_transaction
            self.in_transaction = []
            self.left = True
            raise MigrationError("a statement ended its transaction; the revision stopped "
                                 "there, use autocommit_block() for work outside a transaction")

    @contextmanager
    def installed(self, migration_context) -> Iterator[None]:
        """The revision's autocommit_block() is this object's, for this attempt (None: a
        rehearsal, which refuses to leave its transaction on its own)."""
        if migration_context is None:
            yield
            return
        original = migration_context.autocommit_block
        migration_context.autocommit_block = functools.partial(self.block, migration_context,
                                                               original)
        sa.event.listen(self.connection, "after_cursor_execute", self.noted)
        try:
            yield
        finally:
            sa.event.remove(self.connection, "after_cursor_execute", self.noted)
            del migration_context.autocommit_block  # the class's method again

    @contextmanager
    def block(self, migration_context, original) -> Iterator[None]:
        """Alembic's autocommit_block, with session timeouts and per-statement retries."""
        if self.savepoint is not None and self.savepoint.is_active:
            self.quiet = True
            self.savepoint.commit()  # Alembic commits the revision's transaction next
            self.quiet = False
        self.left = True
        with original():
            self.committed += self.in_transaction  # that commit made them stay
            self.in_transaction = []
            raw = migration_context.connection.connection  # the driver's, in autocommit
            saved = session_timeouts(raw, self.settings)
            impl = migration_context.impl
            # Alembic runs every operation through impl._exec (its name since 0.x); each
            # statement here is its own transaction, so each can be retried alone.
            execute = impl._exec
            impl._exec = functools.partial(self.retried, execute, raw)
            self.outside = True
            try:
                drop_invalid_indexes(raw, self.label)
                yield
            finally:
                self.outside = False
                del impl._exec
                restore_timeouts(raw, saved)

    def retried(self, execute, raw, *args, **kwargs):
        """One statement outside the transaction, tried again on a lock timeout."""
        retries = self.settings.pg_lock_retries
        attempt = 0
        while True:
            try:
                return execute(*args, **kwargs)
            except sa.exc.OperationalError as exc:
                if not is_lock_timeout(exc) or attempt == retries:
                    raise
                attempt += 1
                self.quiet = True
                try:
                    held_by = blockers(self.connection, exc.statement or "")
                finally:
                    self.quiet = False
                pause = backoff(attempt - 1)
                print(f"{self.label}: a statement outside the transaction waited "
                      f"{self.settings.pg_lock_timeout:g} s for a lock held by {held_by}; "
                      f"retrying in {pause:g} s ({attempt} of {retries})", file=sys.stderr)
                time.sleep(pause)  # the backoff itself, not a synchronisation
                drop_invalid_indexes(raw, self.label)

    def failure(self, exc: BaseException) -> str:
        """The one line for a revision that failed after some of its work committed."""
        what = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
        reason = one_line(str(what)) or type(what).__name__
        done = "; ".join(f"{n}) {s}" for n, s in enumerate(self.committed, 1))
        if not self.committed:
            return (f"{self.label} failed ({reason}) outside its transaction, before any of its "
                    "statements had committed; its version is not recorded")
        return (f"{self.label} failed ({reason}) after {len(self.committed)} of its statements "
                f"had committed, and they stay: {done}. The rest of the "
                "revision was rolled back and its version is not recorded: make its statements "
                "safe to run again (IF NOT EXISTS) and run the upgrade again")


def one_line(statement: str) -> str:
    return " ".join(statement.split())[:200]


def session_timeouts(raw, settings: Settings) -> tuple[str, str]:
    """Set lock_timeout (and statement_timeout) for the session; return the old values."""
    with raw.cursor() as cursor:
        cursor.execute("SELECT current_setting('lock_timeout'), "
                       "current_setting('statement_timeout')")
        saved = cursor.fetchone()
        cursor.execute("SELECT set_config('lock_timeout', %(ms)s, false)",
                       {"ms": milliseconds(settings.pg_lock_timeout)})
        if settings.pg_statement_timeout:
            cursor.execute("SELECT set_config('statement_timeout', %(ms)s, false)",
                           {"ms": milliseconds(settings.pg_statement_timeout)})
    return saved


def restore_timeouts(raw, saved: tuple[str, str]) -> None:
    with raw.cursor() as cursor:
        cursor.execute("SELECT set_config('lock_timeout', %(lock)s, false), "
                       "set_config('statement_timeout', %(statement)s, false)",
                       {"lock": saved[0], "statement": saved[1]})


# INVALID indexes on the app's tables that no session is building now: what a concurrent
# build that failed leaves behind.
INVALID_INDEXES = """
SELECT n.nspname, c.relname FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT i.indisvalid AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND left(n.nspname, 8) <> 'pg_toast' AND left(n.nspname, 7) <> 'pg_temp'
  AND NOT EXISTS (SELECT 1 FROM pg_stat_progress_create_index p
                  WHERE p.index_relid = i.indexrelid)
ORDER BY 1, 2
"""


def drop_invalid_indexes(raw, label: str) -> None:
    """Drop the INVALID indexes a failed concurrent build left, so the build can run again
    (in autocommit: DROP INDEX CONCURRENTLY takes no lock that blocks the table's users)."""
    from psycopg2 import sql

    with raw.cursor() as cursor:
        cursor.execute(INVALID_INDEXES)
        for schema, name in cursor.fetchall():
            cursor.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
                sql.Identifier(schema, name)))
            print(f"{label}: dropped the INVALID index {schema}.{name} a failed concurrent "
                  "build had left", file=sys.stderr)


def blockers(connection, statement: str) -> str:
    """The other sessions holding locks on the app's tables (any non-system schema of this
    database). PostgreSQL's lock timeout does not say which table it waited for, and the
    statement's text is not parsed for names: the catalog says who holds what."""
    rows = connection.execute(sa.text(
        "SELECT DISTINCT a.pid, a.state, left(regexp_replace(a.query, '\\s+', ' ', 'g'), 80)"
        " AS query FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE l.granted AND l.pid <> pg_backend_pid() AND c.relkind IN ('r', 'p')"
        " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        " AND left(n.nspname, 8) <> 'pg_toast' AND left(n.nspname, 7) <> 'pg_temp'"
        " ORDER BY a.pid")).all()
    if not rows:
        return "a session that has ended"
    return ", ".join(f"pid {r.pid} ({r.state}: {r.query})" for r in rows)
