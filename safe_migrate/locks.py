"""One migration at a time per database: others wait, up to MIGRATE_LOCK_TIMEOUT.

SQLite: an exclusive flock on `<database>.migration-lock` beside the file (SQLite's own write
lock lasts one transaction, and a run is one transaction per revision), removed when the run
ends. PostgreSQL: a session advisory lock. MySQL/MariaDB: GET_LOCK (mysql.py). Local filesystems only, as SQLite itself.
MIGRATE_LOCK_TIMEOUT bounds a run's waiting in all, whoever holds what it waits for.
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

from . import mysql
from .errors import MigrationError, describe

# Any constant works; PostgreSQL advisory locks are named by a number.
PG_LOCK_KEY = 0x6D696772


class WaitBudget:
    """One run's MIGRATE_LOCK_TIMEOUT, spent by each of its waits for a lock (the migration
    lock, SQLite's write lock at every revision), so that they add up to no more."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.left = seconds

    def milliseconds_left(self) -> int:
        # At least 1: PostgreSQL reads a lock_timeout of 0 as "wait forever".
        return max(1, int(self.left * 1000))

    @contextmanager
    def spend(self):
        """Count the time the block takes as waiting."""
        start = time.monotonic()
        try:
            yield
        finally:
            self.left = max(0.0, self.left - (time.monotonic() - start))


@contextmanager
def migration_lock(engine: sa.engine.Engine, path: Path | None, budget: WaitBudget):
    """Hold the database's migration lock for the duration of the block."""
    if path is not None:
        with file_lock(path, budget):
            yield
    elif engine.dialect.name == "postgresql":
        with advisory_lock(engine, budget):
            yield
    elif engine.dialect.name == "mysql":
        with mysql.migration_lock(engine, budget):
            yield
    else:
        yield


@contextmanager
def file_lock(path: Path, budget: WaitBudget):
    name = Path(f"{path}.migration-lock")
    deadline = time.monotonic() + budget.left
    while True:
        with open(name, "a+") as lock:
            with budget.spend():
                wait_for_flock(lock, path, deadline, budget.seconds)
            if not is_at(lock, name):
                continue  # the run before removed it: start over on the new file
            # The file names the holder, so a waiting run can say who it waits for.
            lock.truncate(0)
            since = datetime.now(UTC)
            lock.write(f"pid {os.getpid()} on {socket.gethostname()} since {since:%H:%M:%S} UTC")
            lock.flush()
            try:
                yield
            finally:
                # Removed while still locked, so no run leaves the file behind, and a run
                # waiting on it finds it gone and starts over.
                name.unlink(missing_ok=True)
            return


def wait_for_flock(lock, path: Path, deadline: float, timeout: float) -> None:
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                lock.seek(0)
                holder = lock.read().strip() or "another process"
                raise MigrationError(
                    f"another migration of {path} is running ({holder}); "
                    f"gave up after {timeout:g} s (MIGRATE_LOCK_TIMEOUT)") from None
            time.sleep(0.05)


def is_at(lock, name: Path) -> bool:
    """Whether the open file `lock` is still the file at `name`."""
    try:
        return os.stat(name).st_ino == os.fstat(lock.fileno()).st_ino
    except FileNotFoundError:
        return False


@contextmanager
def advisory_lock(engine: sa.engine.Engine, budget: WaitBudget):
    timeout = budget.seconds
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("SELECT set_config('lock_timeout', %(ms)s, false)",
                             {"ms": f"{budget.milliseconds_left()}ms"})
        # The lock lasts as long as this session: a server-side timeout must not end it
        # while the revisions run on another connection.
        conn.exec_driver_sql("SET statement_timeout = 0")
        conn.exec_driver_sql("SET idle_in_transaction_session_timeout = 0")
        if conn.dialect.server_version_info >= (14,):
            conn.exec_driver_sql("SET idle_session_timeout = 0")
        try:
            with budget.spend():
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
