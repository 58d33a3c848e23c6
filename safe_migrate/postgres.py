"""PostgreSQL revisions that cannot pile up a lock queue.

An ALTER TABLE waiting for its ACCESS EXCLUSIVE lock behind one long transaction blocks
every later query on the table. So each revision's transaction sets a short `lock_timeout`
(MIGRATE_PG_LOCK_TIMEOUT, 2 s) and, optionally, a `statement_timeout`; when the lock timeout
fires, the revision's work is rolled back to a savepoint taken at its start (which releases
every lock it took) and tried again after a pause, a bounded number of times
(MIGRATE_PG_LOCK_RETRIES), each retry printed with the sessions that held the table.
"""
from __future__ import annotations

import sys
import time

import sqlalchemy as sa

from .errors import MigrationError
from .settings import Settings

LOCK_NOT_AVAILABLE = "55P03"


def install(engine: sa.engine.Engine, settings: Settings) -> None:
    """Give each transaction of a migration run's engine (one per revision) the timeouts,
    as bound values of set_config (local to the transaction)."""
    def on_begin(connection) -> None:
        connection.exec_driver_sql("SELECT set_config('lock_timeout', %(ms)s, true)",
                                   {"ms": milliseconds(settings.pg_lock_timeout)})
        if settings.pg_statement_timeout:
            connection.exec_driver_sql("SELECT set_config('statement_timeout', %(ms)s, true)",
                                       {"ms": milliseconds(settings.pg_statement_timeout)})

    sa.event.listen(engine, "begin", on_begin)


def milliseconds(seconds: float) -> str:
    """A setting in whole milliseconds; Settings keeps every timeout at 1 ms or more, so
    none becomes 0, which PostgreSQL reads as no limit at all."""
    return f"{round(seconds * 1000)}ms"


def is_lock_timeout(exc: BaseException) -> bool:
    return getattr(getattr(exc, "orig", None), "pgcode", None) == LOCK_NOT_AVAILABLE


def retrying(run, connection, settings: Settings, label: str):
    """`run` (a revision's upgrade or downgrade), retried when its lock timeout fires."""
    def run_until_locked(**kwargs):
        for attempt in range(settings.pg_lock_retries + 1):
            # Not `with begin_nested()`: the app's db.session, joined to this connection in a
            # revision (runner.app_session_on), may release the savepoint with its commit;
            # the revision goes on in its transaction, and only a lock timeout while the
            # savepoint still stands can be retried from it.
            savepoint = connection.begin_nested()
            try:
                result = run(**kwargs)
            except sa.exc.OperationalError as exc:
                if not is_lock_timeout(exc) or not savepoint.is_active:
                    raise
                savepoint.rollback()
                held_by = blockers(connection, exc.statement or "")
                if attempt == settings.pg_lock_retries:
                    raise MigrationError(
                        f"{label}: could not lock a table within {settings.pg_lock_timeout:g} s "
                        f"(MIGRATE_PG_LOCK_TIMEOUT), {attempt + 1} times; held by {held_by}; "
                        "that revision was rolled back") from None
                pause = min(0.5 * 2 ** attempt, 10.0)
                print(f"{label}: waited {settings.pg_lock_timeout:g} s for a lock held by "
                      f"{held_by}; rolled back, retrying in {pause:g} s "
                      f"({attempt + 1} of {settings.pg_lock_retries})", file=sys.stderr)
                time.sleep(pause)  # the backoff itself, not a synchronisation
                continue
            if savepoint.is_active:
                savepoint.commit()
            return result
    return run_until_locked


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
