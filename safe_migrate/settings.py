"""Settings read from the environment, checked once at start-up."""
from __future__ import annotations

import math
import os

from .errors import MigrationError


def seconds(name: str, default: float) -> float:
    """A positive, finite number of seconds from the environment variable `name`."""
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0:
        raise MigrationError(f"{name} must be a number of seconds, not {value!r}")
    return number


def count(name: str, default: int) -> int:
    """A whole number, 0 or more, from the environment variable `name`."""
    value = os.environ.get(name)
    if value is None:
        return default
    if not value.strip().isdigit():
        raise MigrationError(f"{name} must be a whole number, not {value!r}")
    return int(value)


class Settings:
    """What MIGRATE_* environment variables say, with their defaults."""

    def __init__(self) -> None:
        # How long a migration waits for another one (or for a writer holding the SQLite file).
        self.lock_timeout = seconds("MIGRATE_LOCK_TIMEOUT", 60.0)
        # How long to wait for a PostgreSQL server that does not answer (libpq would wait
        # forever); libpq takes whole seconds.
        self.connect_timeout = max(1, round(seconds("MIGRATE_CONNECT_TIMEOUT", 10.0)))
        self.snapshots_kept = 10
        # PostgreSQL: how long a revision's statement may wait for a table's lock before the
        # revision is rolled back and retried, how many times, and an optional limit on any
        # one statement (0: none).
        self.pg_lock_timeout = seconds("MIGRATE_PG_LOCK_TIMEOUT", 2.0)
        self.pg_lock_retries = count("MIGRATE_PG_LOCK_RETRIES", 5)
        self.pg_statement_timeout = seconds("MIGRATE_PG_STATEMENT_TIMEOUT", 0.0)
