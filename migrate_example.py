"""The Flask-Migrate tutorial's app: a Flask-Script manager with `db` migration commands.

    python migrate_example.py db init | migrate | upgrade | downgrade | ...

Set MIGRATE_TRACEBACK=1 to see the full traceback of an error.
"""
import fcntl
import inspect
import logging
import os
import socket
import sqlite3
import sys
import time
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import flask_migrate
import sqlalchemy as sa
from alembic import command
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import MultipleHeads, RevisionError
from alembic.util import CommandError
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

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
DATABASE_URL = os.environ.get("DATABASE_URL", f"sqlite:///{BASE_DIR / 'data.db'}")
IS_SQLITE = DATABASE_URL.startswith("sqlite")

# How long a migration waits for another one (or for a writer holding the SQLite file).
LOCK_TIMEOUT = float(os.environ.get("MIGRATE_LOCK_TIMEOUT", "60"))
SNAPSHOTS_KEPT = 10
# Any constant works; PostgreSQL advisory locks are named by a number.
PG_LOCK_KEY = 0x6D696772

app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = DATABASE_URL
app.config["SQLALCHEMY_TRACK_MODIFICATIONS"] = False
if IS_SQLITE:
    # pysqlite's `timeout` is SQLite's busy timeout: wait for a lock, then fail.
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"connect_args": {"timeout": LOCK_TIMEOUT}}
elif DATABASE_URL.startswith("postgres"):
    # The name shows in pg_stat_activity, so a waiting migration can say who holds the lock.
    client = f"migrate_example pid {os.getpid()} on {socket.gethostname()}"[:63]
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"connect_args": {"application_name": client}}

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

db = SQLAlchemy(app, metadata=sa.MetaData(naming_convention=NAMING_CONVENTION))

# These keyword arguments reach Alembic's context.configure() through the env.py that
# `db init` writes, so a project started from an empty folder gets them too.
# - render_as_batch: SQLite cannot ALTER most things, so autogenerate writes
#   batch_alter_table blocks (a table copy on SQLite, plain ALTERs elsewhere).
# - compare_type: a changed column type is a change worth a migration.
# - transaction_per_migration: each revision, with its alembic_version update, commits or
#   rolls back as a whole. transactional_ddl: SQLite's DDL is transactional, but Alembic
#   assumes it is not unless told (see sqlite_begin below for the driver's part).
migrate = Migrate(
    app,
    db,
    directory=BASE_DIR / "migrations",
    render_as_batch=True,
    compare_type=True,
    transaction_per_migration=True,
    transactional_ddl=True if IS_SQLITE else None,
)

manager = Manager(app)
manager.add_command("db", MigrateCommand)

# Alembic 1.19 announces each autogenerate plugin at INFO on every `db migrate`. A filter,
# not a level: env.py's logging.config.fileConfig() resets the levels of alembic's loggers.
logging.getLogger("alembic.runtime.plugins").addFilter(lambda record: record.levelno > logging.INFO)


# pysqlite opens transactions itself, late, and commits before DDL, so a failed batch
# migration would leave a half-copied table behind. SQLAlchemy's documented recipe: turn
# the driver's handling off and emit BEGIN ourselves. IMMEDIATE takes SQLite's write lock
# up front, so a revision never fails half-way for want of it.
@sa.event.listens_for(sa.engine.Engine, "connect")
def sqlite_no_driver_transactions(dbapi_connection, connection_record):
    if isinstance(dbapi_connection, sqlite3.Connection):
        dbapi_connection.isolation_level = None


@sa.event.listens_for(sa.engine.Engine, "begin")
def sqlite_begin(connection):
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")


# --- models ----------------------------------------------------------------------------


class Employee(db.Model):
    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String, unique=True, nullable=False)
    age = db.Column(db.Integer, unique=False, nullable=True)


class Company(db.Model):
    cid = db.Column(db.Integer, primary_key=True)
    cname = db.Column(db.String, unique=True, nullable=False)
    clocation = db.Column(db.String, unique=False, nullable=False)


# --- keeping migrations safe -----------------------------------------------------------


class MigrationError(Exception):
    """A failure the user can act on; main() prints it as one line."""


def sqlite_path():
    """The SQLite database file, or None for other databases and in-memory SQLite."""
    url = db.engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


@contextmanager
def migration_lock():
    """Let one upgrade or downgrade at a time run against the database; others wait."""
    path = sqlite_path()
    if path is not None:
        with sqlite_migration_lock(path):
            yield
    elif db.engine.dialect.name == "postgresql":
        with postgresql_advisory_lock():
            yield
    else:
        yield


@contextmanager
def sqlite_migration_lock(path):
    # A lock file beside the database, not SQLite's own lock: that one is per transaction,
    # and a run holds one transaction per revision. The file names the holder.
    with open(f"{path}.migration-lock", "a+") as lock:
        deadline = time.monotonic() + LOCK_TIMEOUT
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
                        f"gave up after {LOCK_TIMEOUT:g} s (MIGRATE_LOCK_TIMEOUT)"
                    ) from None
                time.sleep(0.05)
        lock.truncate(0)
        lock.write(f"pid {os.getpid()} on {socket.gethostname()} since {now_utc():%H:%M:%S} UTC")
        lock.flush()
        yield


@contextmanager
def postgresql_advisory_lock():
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f"SET lock_timeout = '{int(LOCK_TIMEOUT * 1000)}ms'")
        try:
            conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": PG_LOCK_KEY})
        except sa.exc.OperationalError as exc:
            if getattr(exc.orig, "pgcode", None) != "55P03":  # lock_not_available
                raise
            raise MigrationError(
                f"another migration of this database is running ({advisory_lock_holder(conn)}); "
                f"gave up after {LOCK_TIMEOUT:g} s (MIGRATE_LOCK_TIMEOUT)"
            ) from None
        try:
            yield
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": PG_LOCK_KEY})


def advisory_lock_holder(conn):
    row = conn.execute(sa.text(
        "SELECT a.pid, a.application_name, a.client_addr FROM pg_locks l"
        " JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted AND l.objid = :key"
    ), {"key": PG_LOCK_KEY}).first()
    if row is None:
        return "holder unknown"
    return f"server pid {row.pid}, {row.application_name or 'no name'}, from {row.client_addr}"


def current_heads():
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_heads()


@contextmanager
def no_empty_version_table_left():
    """Alembic creates alembic_version outside the first revision's transaction; if that
    revision fails, drop the table again so the database is as it was."""
    had_table = sa.inspect(db.engine).has_table("alembic_version")
    try:
        yield
    except BaseException:
        if not had_table:
            with db.engine.begin() as conn:
                if conn.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar() == 0:
                    conn.execute(sa.text("DROP TABLE alembic_version"))
        raise


def planned_revisions(script, direction, destination, heads):
    """The revision scripts `db upgrade|downgrade destination` will run, in order."""
    try:
        if direction == "upgrade":
            revisions = script.iterate_revisions(destination, heads, implicit_base=True)
            return list(reversed(list(revisions)))
        if not heads:
            raise MigrationError("nothing to downgrade: the database is at base")
        return list(script.iterate_revisions(heads, destination, select_for_downgrade=True))
    except MultipleHeads:
        raise MigrationError(
            f"{destination!r} is ambiguous: the history has several heads "
            f"({', '.join(script.get_heads())}); join them with `db merge heads -m MESSAGE`, "
            "or name one revision"
        ) from None
    except RevisionError as exc:
        raise MigrationError(str(exc)) from None


def revision_label(revisions):
    return "+".join(revisions) if revisions else "base"


def planned_destination(direction, revisions):
    if direction == "upgrade":
        return revision_label([revisions[-1].revision])
    down = revisions[-1].down_revision
    return revision_label([down] if isinstance(down, str) else down or [])


def now_utc():
    return datetime.now(UTC)


def take_snapshot(path, label):
    """Copy the SQLite file with SQLite's online backup API into backups/ beside it."""
    backups = path.parent / "backups"
    backups.mkdir(exist_ok=True)
    snapshot = backups / f"{path.stem}.{label}.{now_utc():%Y%m%dT%H%M%S%fZ}.db"
    with closing(sqlite3.connect(path)) as source, closing(sqlite3.connect(snapshot)) as copy:
        source.backup(copy)
    print(f"Snapshot of {path.name} saved to {snapshot}")
    for old in sorted(backups.glob(f"{path.stem}.*.db"), key=snapshot_time)[:-SNAPSHOTS_KEPT]:
        old.unlink()
    return snapshot


def snapshot_time(snapshot):
    return snapshot.name.rsplit(".", 2)[-2]


def x_options(x_arg):
    """`-x key=value` arguments as a dict."""
    return dict(x.partition("=")[::2] for x in x_arg or [])


def run_migration(direction, directory, revision, sql, tag, x_arg):
    """Upgrade or downgrade under the migration lock, after a snapshot of a SQLite file."""
    run = getattr(flask_migrate, direction)
    if sql:  # offline: prints SQL, touches no database
        return run(directory, revision, sql, tag, x_arg)
    script = ScriptDirectory.from_config(migrate.get_config(directory, x_arg=x_arg))
    path = sqlite_path()
    existing_file = path is not None and path.exists()
    with migration_lock():
        heads = current_heads()
        revisions = planned_revisions(script, direction, revision, heads)
        if revisions and existing_file and x_options(x_arg).get("backup") != "off":
            take_snapshot(path, f"{revision_label(heads)}-{planned_destination(direction, revisions)}")
        with no_empty_version_table_left():
            run(directory, revision, sql, tag, x_arg)


# --- commands --------------------------------------------------------------------------


def replaces_db_command(name):
    """Make the decorated function the body of Flask-Migrate's `db NAME` subcommand.

    The subcommand keeps Flask-Migrate's options; the function takes the same arguments,
    and its docstring becomes the help text.
    """
    def decorate(func):
        subcommand = MigrateCommand._commands[name]
        subcommand.run = func
        subcommand.__doc__ = func.__doc__
        return func

    return decorate


@replaces_db_command("revision")
def create_revision(directory=None, message=None, autogenerate=False, sql=False, head="head",
                    splice=False, branch_label=None, version_path=None, rev_id=None):
    """Create a new revision file."""
    # Flask-Migrate 2.7 does not tell env.py that `revision --autogenerate` autogenerates,
    # so env.py's "no changes, no file" check only ever ran for `db migrate`.
    config = migrate.get_config(directory, opts=["autogenerate"] if autogenerate else None)
    try:
        command.revision(config, message, autogenerate=autogenerate, sql=sql, head=head,
                         splice=splice, branch_label=branch_label,
                         version_path=version_path, rev_id=rev_id)
    except CommandError as exc:
        if "not up to date" in str(exc):
            raise MigrationError(f"{exc} Run `db upgrade` first.") from None
        raise MigrationError(str(exc)) from None


@replaces_db_command("migrate")
def autogenerate_revision(directory=None, message=None, sql=False, head="head", splice=False,
                          branch_label=None, version_path=None, rev_id=None, x_arg=None):
    """Write a revision from the differences between models and database
    (alias for 'revision --autogenerate')."""
    create_revision(directory, message, True, sql, head, splice, branch_label, version_path,
                    rev_id)


@replaces_db_command("upgrade")
def upgrade_database(directory=None, revision="head", sql=False, tag=None, x_arg=None):
    """Upgrade to a later version (a SQLite file is snapshotted first; -x backup=off skips)."""
    run_migration("upgrade", directory, revision, sql, tag, x_arg)


@replaces_db_command("downgrade")
def downgrade_database(directory=None, revision="-1", sql=False, tag=None, x_arg=None):
    """Revert to a previous version (a SQLite file is snapshotted first; -x backup=off skips)."""
    run_migration("downgrade", directory, revision, sql, tag, x_arg)


@MigrateCommand.option("snapshot", help="a snapshot file, from backups/ beside the database")
def restore(snapshot):
    """Put a snapshot from backups/ back in place of the SQLite database."""
    path = sqlite_path()
    snapshot = Path(snapshot)
    if path is None:
        raise MigrationError("restore works on SQLite files only; use your server's backups")
    if not snapshot.is_file():
        raise MigrationError(f"no snapshot at {snapshot}")
    with migration_lock():
        if path.exists():
            take_snapshot(path, f"{revision_label(current_heads())}-restore")
        with closing(sqlite3.connect(snapshot)) as source, closing(sqlite3.connect(path)) as target:
            source.backup(target)
    print(f"Restored {path} from {snapshot}")


# --- running ---------------------------------------------------------------------------


def describe_error(exc):
    """One line for an error: what failed, and where in a revision file if it was there."""
    if isinstance(exc, MigrationError):
        return str(exc)
    if isinstance(exc, SyntaxError):
        return f"{exc.filename}, line {exc.lineno}: {exc.msg}"
    if isinstance(exc, sa.exc.DBAPIError):
        message = str(exc.orig).strip().splitlines()[0]
    elif isinstance(exc, sa.exc.ArgumentError) and "URL" in str(exc):
        message = f"DATABASE_URL is not a database URL ({exc})"
    else:
        message = f"{type(exc).__name__}: {exc}"
    in_revision = [frame for frame in inspect.getinnerframes(exc.__traceback__, context=0)
                   if is_revision_file(Path(frame.filename))]
    if in_revision:
        return f"{in_revision[-1].filename}, line {in_revision[-1].lineno}: {message}"
    return message


def is_revision_file(path):
    return path.parent.name == "versions" and (path.parent.parent / "env.py").exists()


def main():
    try:
        manager.run()
    except Exception as exc:
        if os.environ.get("MIGRATE_TRACEBACK"):
            raise
        sys.exit(f"Error: {describe_error(exc)}")


if __name__ == "__main__":
    main()
