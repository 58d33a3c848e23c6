"""The Flask extension: `Migrate(app, db)`, as Flask-Migrate's, set up so that every
migration run goes through this package.

It keeps Flask-Migrate's shape (`app.extensions['migrate']` has `db`, `directory`,
`configure_args`, `migrate`), so an env.py written for Flask-Migrate finds what it looks for,
and adds the app's engine settings, the SQLite listeners and `flask db`.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import sqlalchemy as sa
from flask import current_app

from . import postgres, sqlite
from .errors import MigrationError, describe
from .locks import WaitBudget, migration_lock
from .settings import Settings

# Every index and constraint gets a predictable name, so a migration can drop or
# recreate it by name (Alembic cannot address anonymous constraints). The name covers every
# column (column_0_N_...), so two constraints that share their first column never collide.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_N_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
TEMPLATES = Path(__file__).resolve().parent / "templates"


def metadata() -> sa.MetaData:
    """A MetaData with the naming convention, for `SQLAlchemy(app, metadata=metadata())`."""
    return sa.MetaData(naming_convention=NAMING_CONVENTION)


def refuse_unguarded_run(*args, **kwargs):
    """Stands in for Alembic's hooks when an env.py passes `configure_args` on its own."""
    raise MigrationError(
        "migrations/env.py does not run through safe_migrate, so nothing was applied: replace "
        "it with the env.py of safe_migrate/templates/flask (see README, 'Use it in your own app')")


class Migrate:
    """Flask-Migrate's `Migrate`, with this package's guarantees on every run."""

    def __init__(self, app=None, db=None, directory="migrations", **kwargs):
        self.db = db
        self.directory = str(directory)
        self.alembic_ctx_kwargs = kwargs
        if app is not None and db is not None:
            self.init_app(app, db, directory)

    def init_app(self, app, db=None, directory=None, **kwargs) -> None:
        self.db = db or self.db
        self.directory = str(directory or self.directory)
        self.alembic_ctx_kwargs.update(kwargs)
        try:
            state = MigrateState(self, app)
        except MigrationError as exc:  # a malformed setting: one line, at start-up
            raise SystemExit(f"Error: {describe(exc)}") from None
        except sa.exc.ArgumentError as exc:
            raise SystemExit(f"Error: {describe(exc)}") from None
        app.extensions["migrate"] = state
        from .cli import db_group

        app.cli.add_command(db_group)

    def get_config(self, directory=None, x_arg=None, opts=None, command=None):
        """Alembic's Config for the migrations folder, as Flask-Migrate makes it; `command`
        tells env.py which command runs (see runner.run_migrations)."""
        import argparse

        from alembic.config import Config

        class TemplatesConfig(Config):
            def get_template_directory(self):
                return str(TEMPLATES)

        directory = str(directory or self.directory)
        config = TemplatesConfig(os.path.join(directory, "alembic.ini"))
        config.set_main_option("script_location", directory)
        config.cmd_opts = argparse.Namespace(x=list(x_arg) if x_arg else None)
        for opt in opts or []:
            setattr(config.cmd_opts, opt, True)
        config.attributes["safe_migrate.command"] = command
        return config


class MigrateState:
    """What `app.extensions['migrate']` holds: the app's migration settings and engine."""

    def __init__(self, migrate: Migrate, app) -> None:
        self.migrate = migrate
        self.app = app
        self.db = migrate.db
        self.directory = migrate.directory
        self.settings = Settings()
        self.url = sa.engine.make_url(app.config["SQLALCHEMY_DATABASE_URI"])
        self.path = sqlite.database_file(self.url, Path(app.root_path))
        # What connecting does when the SQLite file is missing: "refuse" (it may be a typo),
        # "create" (`db upgrade`, `db stamp`), or "compare with empty" (`db migrate`).
        self.missing = "refuse"
        # --rehearse: the engine of a SQLite copy, or the connection of a PostgreSQL
        # transaction that will be rolled back (see rehearsal.py).
        self.rehearsal_engine: sa.engine.Engine | None = None
        self.rehearsal_connection: sa.engine.Connection | None = None
        is_sqlite = self.url.get_backend_name() == "sqlite"
        self.configure_args = {
            # SQLite cannot ALTER most things, so autogenerate writes batch_alter_table
            # blocks (a table copy on SQLite, plain ALTERs elsewhere).
            "render_as_batch": True,
            "compare_type": True,
            # Each revision, with its alembic_version update, commits or rolls back whole;
            # SQLite's DDL is transactional, but Alembic assumes not unless told.
            "transaction_per_migration": True,
            "transactional_ddl": True if is_sqlite else None,
            # The runner replaces these; an env.py of its own making gets refused.
            "on_version_apply": refuse_unguarded_run,
            "include_name": refuse_unguarded_run,
            **migrate.alembic_ctx_kwargs,
        }
        self.set_engine_options(app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {}))
        self.listen(self.db.get_engine(app))  # before anything connects

    @property
    def rehearsing(self) -> bool:
        return self.rehearsal_engine is not None or self.rehearsal_connection is not None

    @property
    def metadata(self) -> sa.MetaData:
        return self.db.metadata

    def set_engine_options(self, options: dict) -> None:
        connect_args = options.setdefault("connect_args", {})
        if self.url.get_backend_name() == "sqlite":
            # pysqlite's `timeout` is SQLite's busy timeout: wait for a lock, then fail.
            connect_args.setdefault("timeout", self.settings.lock_timeout)
            if self.url.query.get("uri") == "true" and self.path is not None:
                options.setdefault("creator", sqlite.uri_creator(
                    self.url, self.path, self.check_missing_file, self.settings.lock_timeout))
                options.setdefault("poolclass", sa.pool.NullPool)
        elif self.url.get_backend_name() == "postgresql":
            # The name shows in pg_stat_activity, so a waiting migration can say who holds
            # the lock.
            client = f"safe_migrate pid {os.getpid()} on {socket.gethostname()}"[:63]
            connect_args.setdefault("application_name", client)
            connect_args.setdefault("connect_timeout", self.settings.connect_timeout)

    @property
    def engine(self) -> sa.engine.Engine:
        """The app's own engine, with this package's SQLite listeners on it (during
        `--rehearse`, the engine of the copy instead)."""
        if self.rehearsal_engine is not None:
            return self.rehearsal_engine
        return self.listen(self.db.get_engine(self.app))

    def listen(self, engine: sa.engine.Engine) -> sa.engine.Engine:
        if engine.dialect.name == "sqlite":
            sqlite.install(engine, self.check_missing_file)
        elif engine.dialect.name == "postgresql":
            postgres.install(engine)
        return engine

    def check_missing_file(self) -> str | None:
        """A typo in DATABASE_URL must not quietly create and migrate an empty database."""
        if self.path is None or self.path.exists():
            return None
        if self.missing == "create":
            print(f"Creating new database at {self.path}")
            return None
        if self.missing == "compare with empty":
            # The tutorial runs `db migrate` before any database exists: compare the models
            # with an empty database in memory, and leave the file to `db upgrade`.
            print(f"No database at {self.path} yet: comparing the models with an empty database")
            return "memory"
        raise MigrationError(
            f"no database at {self.path} (check DATABASE_URL); only `db upgrade` creates one")

    def wait_budget(self) -> WaitBudget:
        """A run's MIGRATE_LOCK_TIMEOUT, for all its waits together (see locks.py)."""
        return WaitBudget(self.settings.lock_timeout)

    def lock(self, budget: WaitBudget):
        """The database's migration lock (see locks.py)."""
        # Keyed by the real file: a database reached through a symlink and through its real
        # path is one database, with one lock.
        path = self.path.resolve() if self.path is not None else None
        return migration_lock(self.engine, path, budget)


def current_state() -> MigrateState:
    """This app's migration state; a one-line error for an app set up with another Migrate."""
    state = current_app.extensions.get("migrate")
    if not isinstance(state, MigrateState):
        raise MigrationError(
            "this app's migrations are not set up with safe_migrate: use "
            "`from safe_migrate import Migrate` in place of Flask-Migrate's")
    return state
