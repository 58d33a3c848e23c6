"""Settings read from the environment when a command runs, each checked against the range
its backend accepts, so that none is silently cut, wrapped or rounded to "no limit".

SQLite's busy timeout and PostgreSQL's timeouts are whole milliseconds in a 32-bit int
(at most 2,147,483,647 ms, about 24.8 days); PostgreSQL reads 0 as "no limit", so a timeout
that is set is at least 1 ms. libpq's connect_timeout is whole seconds, at least 1.
"""
from __future__ import annotations

import math
import os

from .errors import MigrationError

MAX_SECONDS = 2_147_483.647  # 2**31 - 1 milliseconds
MIN_SECONDS = 0.001          # 1 ms


def seconds(name: str, default: float, low: float = 0.0, high: float = MAX_SECONDS,
            zero: bool = False) -> float:
    """A number of seconds from the environment variable `name`, from `low` to `high`
    (and 0, where `zero` says 0 means "none")."""
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and (low <= number <= high or (zero and number == 0))):
        allowed = f"{plain(low)} to {plain(high)}" + (", or 0 for none" if zero else "")
        raise MigrationError(f"{name} must be a number of seconds from {allowed}, not {value!r}")
    return number


def plain(number: float) -> str:
    """2147483.647, 0.001, 60: a number as a person writes it."""
    return f"{number:.3f}".rstrip("0").rstrip(".")


def count(name: str, default: int, high: int = 100, low: int = 0) -> int:
    """A whole number from `low` to `high` from the environment variable `name`."""
    value = os.environ.get(name)
    if value is None:
        return default
    if not (value.strip().isascii() and value.strip().isdigit()) or not low <= int(value) <= high:
        raise MigrationError(f"{name} must be a whole number from {low} to {high}, not {value!r}")
    return int(value)


MEGABYTE = 1 << 20           # what `du -h` and `ls -lh` call M
MAX_MEGABYTES = 1 << 30      # a petabyte: no disk holds more snapshots than this


def megabytes(name: str) -> int | None:
    """A size in megabytes from the environment variable `name`, from 0.01 to MAX_MEGABYTES,
    or 0 for none, as bytes (None: none, the default)."""
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and (0.01 <= number <= MAX_MEGABYTES or number == 0)):
        raise MigrationError(f"{name} must be a number of megabytes from 0.01 to {MAX_MEGABYTES}, "
                             f"or 0 for none, not {value!r}")
    return round(number * MEGABYTE) or None


class Settings:
    """What MIGRATE_* environment variables say, with their defaults."""

    def __init__(self) -> None:
        # How long a migration waits for another one (or for a writer holding the SQLite
        # file): SQLite's busy timeout, PostgreSQL's lock_timeout on the advisory lock.
        self.lock_timeout = seconds("MIGRATE_LOCK_TIMEOUT", 60.0)
        # How long to wait for a PostgreSQL server that does not answer (libpq would wait
        # forever); libpq takes whole seconds.
        self.connect_timeout = max(1, round(seconds("MIGRATE_CONNECT_TIMEOUT", 10.0, low=1)))
        # SQLite snapshots in backups/: how many of a database's are kept, and how large they
        # may be together (None: no size cap); see snapshots.py.
        self.snapshots_kept = count("MIGRATE_SNAPSHOTS_KEEP", 10, high=1000, low=1)
        self.snapshots_max_bytes = megabytes("MIGRATE_SNAPSHOTS_MAX_MB")
        # PostgreSQL: how long a revision's statement may wait for a table's lock before the
        # revision is rolled back and retried, how many times, and an optional limit on any
        # one statement (0: none).
        # MIGRATE_DDL_LOCK_TIMEOUT is the same limit for every database (MySQL/MariaDB:
        # lock_wait_timeout, whole seconds); MIGRATE_PG_LOCK_TIMEOUT, its older name, is
        # read when it is not set.
        ddl = "MIGRATE_DDL_LOCK_TIMEOUT"
        self.ddl_lock_timeout = seconds(ddl if ddl in os.environ else "MIGRATE_PG_LOCK_TIMEOUT",
                                        2.0, low=MIN_SECONDS)
        self.pg_lock_timeout = self.ddl_lock_timeout
        self.pg_lock_retries = count("MIGRATE_PG_LOCK_RETRIES", 5)
        self.pg_statement_timeout = seconds("MIGRATE_PG_STATEMENT_TIMEOUT", 0.0,
                                            low=MIN_SECONDS, zero=True)
