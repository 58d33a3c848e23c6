"""safe_migrate: Flask-Migrate 2.7's `Migrate` and `MigrateCommand` for Flask-Script apps,
with every migration run made safe where Alembic runs it.

    from safe_migrate import Migrate, MigrateCommand, metadata

    db = SQLAlchemy(app, metadata=metadata())     # named constraints
    migrate = Migrate(app, db)                     # also registers `flask db`
    manager.add_command("db", MigrateCommand)      # `python manage.py db ...`

`migrations/env.py` (the one `db init` writes, or `db env` into an existing project) calls
`run_migrations()`; that is where the guarantees live (runner.py), so both CLIs, and anything
else that runs Alembic's commands for the app, get them.
"""
from . import compat  # noqa: F401  (first: Flask-Script needs it)
from .backfill import backfill
from .cli import flask_script_manager
from .errors import MigrationError
from .extension import NAMING_CONVENTION, Migrate, metadata
from .import_errors import install as one_line_url_errors_at_import

one_line_url_errors_at_import()  # Flask-SQLAlchemy 3: the engine is made at the app's import

MigrateCommand = flask_script_manager()


def run_migrations() -> None:
    """Run the Alembic command in progress with this package's guarantees: migrations/env.py
    calls this. (Imported here, not above: commands that never run env.py skip Alembic.)"""
    from .runner import run_migrations

    run_migrations()

def run_multidb_migrations() -> None:
    """The same for a `db init --multidb` history: each database in turn (multidb.py)."""
    from .multidb import run_multidb_migrations

    run_multidb_migrations()


__all__ = [
           "NAMING_CONVENTION",
           "Migrate",
           "MigrateCommand",
           "MigrationError",
           "backfill",
           "metadata",
           "run_migrations",
           "run_multidb_migrations",
]
