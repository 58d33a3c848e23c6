"""Migration connections: the only connections this package configures.

Each command makes its own engine from the app's database URL (never the app's engine, which
stays exactly as Flask-SQLAlchemy made it: no listener, pragma, BEGIN mode or timeout of ours
reaches a web request, `flask shell` or the app's tests). The backend's module
(sqlite.py, postgres.py, mysql.py) puts its settings on that engine alone. With a wait budget it is the
engine of a migration run: its transactions take the write lock and its lock waits are
bounded by MIGRATE_LOCK_TIMEOUT; without one, it only reads.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import sqlalchemy as sa

from . import mysql, postgres, sqlite
from .errors import MigrationError
from .locks import WaitBudget
from .settings import Settings
from .urls import check_database_url


def database_url(uri: str | sa.engine.URL) -> sa.engine.URL:
    """The app's database URL, parsed and checked: a dialect or driver that is not there is
    one line (urls.py)."""
    return check_database_url(uri)


# The databases this package keeps its guarantees on (docs/guarantees.md).
SUPPORTED = ("sqlite", "postgresql", "mysql")


def refuse_unsupported(url: sa.engine.URL, command: str | None) -> None:
    """A command that would change a database the package cannot keep its guarantees on
    stops here, before it connects: MySQL and MariaDB commit each DDL statement on its own,
    so a failed revision would stay half-applied, and there is no lock, snapshot or rehearsal
    there. Offline `--sql` and the read-only commands still run."""
    backend = url.get_backend_name()
    if backend not in SUPPORTED:
        raise MigrationError(
            f"{command or 'this migration'} refused: on {backend} the package cannot keep its "
            "guarantees (each DDL statement commits on its own, so a failed revision stays "
            "half-applied; no lock, snapshot or rehearsal); nothing was changed. "
            "See docs/guarantees.md")


def migration_engine(url: sa.engine.URL, path: Path | None, settings: Settings,
                     app_connect_args: dict, *, budget: WaitBudget | None = None,
                     missing: str = "refuse") -> sa.engine.Engine:
    """A new engine on the app's database for one command. `missing` says what connecting
    does when the SQLite file does not exist: "refuse" (it may be a typo), "create"
    (`db upgrade`, `db stamp`) or "compare with empty" (`db migrate` before any database)."""
    connect_args = dict(app_connect_args)
    options: dict = {"poolclass": sa.pool.NullPool}
    backend = url.get_backend_name()
    if backend == "sqlite":
        # pysqlite's `timeout` is SQLite's busy timeout: wait for a lock, then fail.
        connect_args.setdefault("timeout", settings.lock_timeout)
        if path is not None:
            guard = sqlite.missing_file_guard(path, missing)
            if url.query.get("uri") == "true":
                options["creator"] = sqlite.uri_creator(url, path, guard, settings.lock_timeout)
            else:
                url = url.set(database=str(path))
    elif backend == "postgresql":
        # The name shows in pg_stat_activity, so a waiting migration can say who holds
        # the lock.
        client = f"safe_migrate pid {os.getpid()} on {socket.gethostname()}"[:63]
        connect_args.setdefault("application_name", client)
        connect_args.setdefault("connect_timeout", settings.connect_timeout)
    elif backend == "mysql":
        connect_args.setdefault("connect_timeout", settings.connect_timeout)  # PyMySQL's too
    engine = sa.create_engine(url, connect_args=connect_args, **options)
    if backend == "sqlite":
        sqlite.install(engine, guard if path is not None else None, budget)
    elif backend == "postgresql" and budget is not None:
        postgres.install(engine, settings)
    elif backend == "mysql" and budget is not None:
        mysql.install(engine, settings)
    return engine
