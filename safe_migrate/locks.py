"""One migration at a time per database: others wait, up to MIGRATE_LOCK_TIMEOUT.

SQLite: an exclusive flock on `<database>.migration-lock` beside the file (SQLite's own write
lock lasts one transaction, and a run is one transaction per revision). PostgreSQL: a session
advisory lock. Local filesystems only, as SQLite itself.
"""
from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from .errors import MigrationError, describe

# Any constant works; PostgreSQL advisory locks are named by a number.
PG_LOCK_KEY = 0x6D696772


@contextmanager
def migration_lock(engine: sa.engine.Engine, path: Path | None, timeout: float):
    """Hold the database's migration lock for the duration of the block."""
    if path is not None:
        with file_lock(path, timeout):
            yield
    elif engine.dialect.name == "postgresql":
        with advisory_lock(engine, timeout):
            yield
    else:
        yield


@contextmanager
def file_lock(path: Path, timeout: float):
    # The file names the holder, so a waiting run can say who it waits for.
    with open(f"{path}.migration-lock", "a+") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    lock.seek(0)
                    holder = lock.read().strip() or "another process"
                    raise MigrationError(
                        f"another migration of {path} is running ({holder}); "
                        f"gave up after {timeout:g} s (MIGRATE_LOCK_TIMEOUT)") from None
                time.sleep(0.05)
        lock.truncate(0)
        since = datetime.now(UTC)
        lock.write(f"pid {os.getpid()} on {socket.gethostname()} since {since:%H:%M:%S} UTC")
        lock.flush()
        yield


@contextmanager
def advisory_lock(engine: sa.engine.Engine, timeout: float):
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f"SET lock_timeout = '{int(timeout * 1000)}ms'")
        # The lock lasts as long as this session: a server-side timeout must not end it
        # while the revisions run on another connection.
        conn.exec_driver_sql("SET statement_timeout = 0")
        conn.exec_driver_sql("SET idle_in_transaction_session_timeout = 0")
        if conn.dialect.server_version_info >= (14,):
            conn.exec_driver_sql("SET idle_session_timeout = 0")
        try:
            conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": PG_LOCK_KEY})
        except sa.exc.OperationalError as exc:
            if getattr(exc.orig, "pgcode", None) != "55P03":  # lock_not_available
                raise
            raise MigrationError(
                f"another migration of this database is running ({lock_holder(conn)}); "
                f"gave up after {timeout:g} s (MIGRATE_LOCK_TIMEOUT)") from None
        try:
            yield
        finally:
            try:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": PG_LOCK_KEY})
            except sa.exc.DBAPIError as exc:  # the session's end releases the lock anyway
                print(f"WARNING: could not release the migration lock ({describe(exc)}); "
                      "the server releases it when the session ends", file=sys.stderr)


def lock_holder(conn: sa.engine.Connection) -> str:
    row = conn.execute(sa.text(
        "SELECT a.pid, a.application_name, a.client_addr FROM pg_locks l"
        " JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted AND l.objid = :key"
    ), {"key": PG_LOCK_KEY}).first()
    if row is None:
        return "holder unknown"
    return f"server pid {row.pid}, {row.application_name or 'no name'}, from {row.client_addr}"
