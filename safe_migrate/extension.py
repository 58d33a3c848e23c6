"""The Flask extension: `Migrate(app, db)`, as Flask-Migrate's, set up so that every
migration run goes through this package.

It keeps Flask-Migrate's shape (`app.extensions['migrate']` has `db`, `directory`,
`configure_args`, `migrate`: state.py), so an env.py written for Flask-Migrate finds what it
looks for, and adds `flask db`. It holds configuration only: the app's own engine is never
touched (no listener, pragma, timeout or file guard), settings are read when a command runs,
and each command makes its own migration engine (connections.py).
"""
from __future__ import annotations

import sqlalchemy as sa

from .cli import db_group
from .state import MigrateState, alembic_config

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


def metadata() -> sa.MetaData:
    """A MetaData with the naming convention, for `SQLAlchemy(app, metadata=metadata())`."""
    return sa.MetaData(naming_convention=NAMING_CONVENTION)


class Migrate:
    """Flask-Migrate's `Migrate`, with this package's guarantees on every run: its
    `command` (the `flask` group's name), `@migrate.configure` callbacks and `get_config`."""

    def __init__(self, app=None, db=None, directory="migrations", command="db", **kwargs):
        self.configure_callbacks = []
        self.db = db
        self.command = command
        self.directory = str(directory)
        self.alembic_ctx_kwargs = kwargs
        if app is not None and db is not None:
            self.init_app(app, db, directory)

    def init_app(self, app, db=None, directory=None, command=None, **kwargs) -> None:
        """Register the app's migration settings and its `flask` group (`db`, or `command`).
        Nothing is read, checked or connected here: a web worker importing the app is never
        stopped by a migration setting, and its engine stays as Flask-SQLAlchemy made it."""
        self.db = db or self.db
        self.command = command or self.command
        self.directory = str(directory or self.directory)
        self.alembic_ctx_kwargs.update(kwargs)
        app.extensions["migrate"] = MigrateState(self, app)
        app.cli.add_command(db_group, name=self.command)

    def configure(self, f):
        """Decorator: `f(config)` gets every command's Alembic Config and returns the one to
        use (Flask-Migrate's callbacks), in the order they were added."""
        self.configure_callbacks.append(f)
        return f

    def call_configure_callbacks(self, config):
        for f in self.configure_callbacks:
            config = f(config)
        return config

    def get_config(self, directory=None, x_arg=None, opts=None, command=None):
        """Alembic's Config for the migrations folder, as Flask-Migrate makes it (see
        state.alembic_config), after the configure callbacks."""
        config = alembic_config(str(directory or self.directory), x_arg, opts, command)
        return self.call_configure_callbacks(config)
