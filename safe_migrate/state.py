"""What `app.extensions['migrate']` holds (MigrateState: the app's migration configuration,
everything else derived when a command asks), and Alembic's Config for a migrations folder.
The commands and the runner read these; only extension.py (Migrate) makes them.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import sqlalchemy as sa
from flask import current_app

from . import connections, sqlite
from .errors import MigrationError
from .locks import WaitBudget, migration_lock
from .settings import Settings

TEMPLATES = Path(__file__).resolve().parent / "templates"


def alembic_config(directory: str, x_arg=None, opts=None, command: str | None = None):
    """Alembic's Config for the migrations folder, as Flask-Migrate makes it; `command`
    tells env.py which command runs (see runner.run_migrations)."""
    from alembic.config import Config

    class TemplatesConfig(Config):
        def get_template_directory(self):
            return str(TEMPLATES)

    config = TemplatesConfig(os.path.join(directory, "alembic.ini"))
    config.set_main_option("script_location", directory)
    config.cmd_opts = argparse.Namespace(x=list(x_arg) if x_arg else None)
    for opt in opts or []:
        setattr(config.cmd_opts, opt, True)
    config.attributes["safe_migrate.command"] = command
    return config


def refuse_unguarded_run(*args, **kwargs):
    """Stands in for Alembic's hooks when an env.py passes `configure_args` on its own."""
    raise MigrationError(
        "migrations/env.py does not run through safe_migrate, so nothing was applied: run "
        "`db env --force` to replace it with safe_migrate's (the old one is kept)")


class MigrateState:
    """What `app.extensions['migrate']` holds: the app's migration configuration. Everything
    else is derived when a command asks for it, from the app's config and the environment."""

    # The Flask-SQLAlchemy bind migrated (None: the default database), and the function of a
    # revision that downgrades it (multidb.BindState: one per bind).
    bind: str | None = None
    downgrade_function = "downgrade"

    def __init__(self, migrate, app) -> None:
        self.migrate = migrate
        self.app = app
        self.db = migrate.db
        self.directory = migrate.directory

    @property
    def settings(self) -> Settings:
        """The MIGRATE_* settings, read and checked now (a bad one fails the command, with
        one line, not the app's start-up)."""
        return Settings()

    @property
    def url(self) -> sa.engine.URL:
        """The app's database URL, checked: a driver that is missing is named now."""
        return connections.database_url(self.app.config["SQLALCHEMY_DATABASE_URI"])

    @property
    def path(self) -> Path | None:
        """The SQLite file the app's URL names."""
        return sqlite.database_file(self.url, Path(self.app.root_path))

    @property
    def configure_args(self) -> dict:
        return {
            # SQLite cannot ALTER most things, so autogenerate writes batch_alter_table
            # blocks (a table copy on SQLite, plain ALTERs elsewhere).
            "render_as_batch": True,
            "compare_type": True,
            # Each revision, with its alembic_version update, commits or rolls back whole;
            # SQLite's DDL is transactional, but Alembic assumes not unless told.
            "transaction_per_migration": True,
            "transactional_ddl": True if self.url.get_backend_name() == "sqlite" else None,
            # The runner replaces these; an env.py of its own making gets refused before the
            # first revision runs (`fn` is the command's list of steps, which the runner keeps).
            "fn": refuse_unguarded_run,
            "on_version_apply": refuse_unguarded_run,
            "include_name": refuse_unguarded_run,
            **self.migrate.alembic_ctx_kwargs,
        }

    @property
    def metadata(self) -> sa.MetaData:
        return self.db.metadata

    @property
    def engine(self) -> sa.engine.Engine:
        """A new engine of this package's own for reading the database: a missing SQLite
        file is refused, never created."""
        return self.migration_engine()

    def migration_engine(self, budget: WaitBudget | None = None, missing: str = "refuse",
                         path: Path | None = None) -> sa.engine.Engine:
        """A new engine for one command (connections.py): with `budget`, the engine of a
        migration run, whose transactions take the database's write lock."""
        app_options = self.app.config.get("SQLALCHEMY_ENGINE_OPTIONS", {})
        return connections.migration_engine(
            self.url, path or self.path, self.settings, app_options.get("connect_args", {}),
            budget=budget, missing=missing)

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
