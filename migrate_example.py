"""The Flask-Migrate tutorial's app: a Flask-Script manager with `db` migration commands.

    python migrate_example.py db init | migrate | upgrade | downgrade | ...
"""
import inspect
import logging
import os
from pathlib import Path

from alembic import command
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import MetaData

# Flask-Script 2.0.6 introspects @manager.command functions with inspect.getargspec(),
# which Python 3.11 removed. Python's docs name getfullargspec() as its replacement; its
# first four fields are getargspec()'s (args, varargs, varkw, defaults).
if not hasattr(inspect, "getargspec"):
    inspect.getargspec = lambda func: inspect.getfullargspec(func)[:4]

from flask_migrate import Migrate, MigrateCommand  # needs the shim above
from flask_script import Manager

# --- configuration ---------------------------------------------------------------------

# data.db and migrations/ live beside this file, whatever the current directory.
BASE_DIR = Path(__file__).resolve().parent

app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = os.environ.get(
    "DATABASE_URL", f"sqlite:///{BASE_DIR / 'data.db'}"
)
app.config["SQLALCHEMY_TRACK_MODIFICATIONS"] = False

# Every index and constraint gets a predictable name, so a migration can drop or
# recreate it by name (Alembic cannot address anonymous constraints).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# --- extensions ------------------------------------------------------------------------

db = SQLAlchemy(app, metadata=MetaData(naming_convention=NAMING_CONVENTION))

# render_as_batch: SQLite cannot ALTER most things, so autogenerate writes
# batch_alter_table blocks (a table copy on SQLite, plain ALTERs elsewhere).
# compare_type: a changed column type is a change worth a migration.
migrate = Migrate(
    app,
    db,
    directory=BASE_DIR / "migrations",
    render_as_batch=True,
    compare_type=True,
)

manager = Manager(app)
manager.add_command("db", MigrateCommand)

# Alembic 1.19 announces each autogenerate plugin at INFO on every `db migrate`. A filter,
# not a level: env.py's logging.config.fileConfig() resets the levels of alembic's loggers.
logging.getLogger("alembic.runtime.plugins").addFilter(lambda record: record.levelno > logging.INFO)

# --- models ----------------------------------------------------------------------------


class Employee(db.Model):
    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String, unique=True, nullable=False)
    age = db.Column(db.Integer, unique=False, nullable=True)


class Company(db.Model):
    cid = db.Column(db.Integer, primary_key=True)
    cname = db.Column(db.String, unique=True, nullable=False)
    clocation = db.Column(db.String, unique=False, nullable=False)


# --- commands --------------------------------------------------------------------------


def replaces_db_command(func):
    """Make func the body of the `db` subcommand of the same name.

    The subcommand keeps Flask-Migrate's options and help; func takes the same arguments.
    """
    MigrateCommand._commands[func.__name__].run = func
    return func


@replaces_db_command
def revision(directory=None, message=None, autogenerate=False, sql=False, head="head",
             splice=False, branch_label=None, version_path=None, rev_id=None):
    """Create a new revision file."""
    # Flask-Migrate 2.7 does not tell env.py that `revision --autogenerate` autogenerates,
    # so env.py's "no changes, no file" check only ever ran for `db migrate`.
    config = migrate.get_config(directory, opts=["autogenerate"] if autogenerate else None)
    command.revision(config, message, autogenerate=autogenerate, sql=sql, head=head,
                     splice=splice, branch_label=branch_label, version_path=version_path,
                     rev_id=rev_id)


if __name__ == "__main__":
    manager.run()
