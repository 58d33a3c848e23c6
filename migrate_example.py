"""The Flask-Migrate tutorial's app: a Flask-Script manager with `db` migration commands.

    python migrate_example.py db init | migrate | upgrade | downgrade | ...

Set MIGRATE_TRACEBACK=1 to see the full traceback of an error.
"""
import ast
import fcntl
import hashlib
import inspect
import json
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
import flask_sqlalchemy
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata, renderers
from alembic.operations import ops
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import MultipleHeads, RevisionError
from alembic.util import CommandError
from flask import Flask

# Flask-Script 2.0.6 introspects @manager.command functions with inspect.getargspec(),
# which Python 3.11 removed. Python's docs name getfullargspec() as its replacement; its
# first four fields are getargspec()'s (args, varargs, varkw, defaults).
if not hasattr(inspect, "getargspec"):
    inspect.getargspec = lambda func: inspect.getfullargspec(func)[:4]

from flask_migrate import Migrate, MigrateCommand  # needs the shim above
from flask_script import Manager, Option

# --- configuration ---------------------------------------------------------------------

# data.db and migrations/ live beside this file, whatever the current directory.
BASE_DIR = Path(__file__).resolve().parent
DATABASE_URL = os.environ.get("DATABASE_URL", f"sqlite:///{BASE_DIR / 'data.db'}")
IS_SQLITE = DATABASE_URL.startswith("sqlite")


def seconds_from_environment(name, default):
    value = os.environ.get(name, default)
    try:
        return float(value)
    except ValueError:
        sys.exit(f"Error: {name} must be a number of seconds, not {value!r}")


# How long a migration waits for another one (or for a writer holding the SQLite file).
LOCK_TIMEOUT = seconds_from_environment("MIGRATE_LOCK_TIMEOUT", "60")
SNAPSHOTS_KEPT = 10
# How long to wait for a PostgreSQL server that does not answer (libpq would wait forever);
# libpq takes whole seconds.
CONNECT_TIMEOUT = max(1, round(seconds_from_environment("MIGRATE_CONNECT_TIMEOUT", "10")))
# Our own bookkeeping beside alembic_version: a sha256 of each applied revision's file.
CHECKSUM_TABLE = "migration_checksums"
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
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {
        "connect_args": {"application_name": client, "connect_timeout": CONNECT_TIMEOUT}
    }
# What a command does when the SQLite file is missing: "refuse" (the default: it may be
# a typo), "create" (`db upgrade`, `db stamp`), or "compare with empty" (`db migrate`).
app.config["MIGRATE_MISSING_DATABASE"] = "refuse"

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


class SQLAlchemy(flask_sqlalchemy.SQLAlchemy):
    def apply_driver_hacks(self, app, sa_url, options):
        # Flask-SQLAlchemy 2.5 puts the app's folder in front of every SQLite path, which
        # turns a URI (sqlite:///file:data.db?mode=ro&uri=true) into a file named
        # "/app/file:data.db?mode=ro". Pass URIs on as URIs, relative ones made absolute.
        if sa_url.drivername == "sqlite" and sa_url.query.get("uri") == "true":
            location = sa_url.database[len("file:"):]
            if not location.startswith("/"):
                sa_url = sa_url.set(database=f"file:{Path(app.root_path) / location}")
            options.setdefault("poolclass", sa.pool.NullPool)
            return sa_url, options
        return super().apply_driver_hacks(app, sa_url, options)


db = SQLAlchemy(app, metadata=sa.MetaData(naming_convention=NAMING_CONVENTION))
checksums = sa.Table(
    CHECKSUM_TABLE,
    sa.MetaData(),
    sa.Column("revision", sa.String(32), primary_key=True),
    sa.Column("checksum", sa.String(64), nullable=False),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)


def file_checksum(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def forget_checksums(connection, revisions=None):
    """Delete the stored checksums of these revisions (of all, without any)."""
    checksums.create(connection, checkfirst=True)
    forget = checksums.delete()
    if revisions is not None:
        forget = forget.where(checksums.c.revision.in_(revisions))
    connection.execute(forget)


def remember_checksums(connection, scripts):
    """Store the sha256 of each revision script's file, as applied now."""
    for script in scripts:
        connection.execute(checksums.insert().values(
            revision=script.revision, checksum=file_checksum(script.path), applied_at=now_utc()))


def record_checksum(ctx, step, heads, run_args):
    """Alembic's on_version_apply hook: in the revision's own transaction, remember the
    sha256 of an applied revision's file, or forget a reverted one."""
    forget_checksums(ctx.connection, step.up_revision_ids)
    if step.is_upgrade:
        remember_checksums(ctx.connection,
                           [step.revision_map.get_revision(r) for r in step.up_revision_ids])


def not_our_bookkeeping(name, type_, parent_names):
    """Alembic's include_name hook: autogenerate leaves the checksum table alone."""
    return not (type_ == "table" and name == CHECKSUM_TABLE)


# These keyword arguments reach Alembic's context.configure() through the env.py that
# `db init` writes, so a project started from an empty folder gets them too.
# - render_as_batch: SQLite cannot ALTER most things, so autogenerate writes
#   batch_alter_table blocks (a table copy on SQLite, plain ALTERs elsewhere).
# - compare_type: a changed column type is a change worth a migration.
# - on_version_apply, include_name: revision checksums (see record_checksum).
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
    on_version_apply=record_checksum,
    include_name=not_our_bookkeeping,
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
def sqlite_connection_setup(dbapi_connection, connection_record):
    if isinstance(dbapi_connection, sqlite3.Connection):
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA foreign_keys=ON")


@sa.event.listens_for(sa.engine.Engine, "begin")
def sqlite_begin(connection):
    if connection.dialect.name != "sqlite":
        return
    if connection.get_execution_options().get("migration"):
        # With enforcement on, a batch copy's DROP TABLE of a parent table deletes (ON DELETE
        # CASCADE) or blocks on its child rows; SQLite ignores this pragma inside a
        # transaction, so it goes before BEGIN. sqlite_check_foreign_keys runs at COMMIT.
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
    connection.exec_driver_sql("BEGIN IMMEDIATE")


@sa.event.listens_for(sa.engine.Engine, "commit")
def sqlite_check_foreign_keys(connection):
    """Before a migration commits, every foreign key must hold, as SQLite's documented
    ALTER TABLE procedure does; a violation rolls the revision back."""
    if connection.dialect.name != "sqlite" or not connection.get_execution_options().get("migration"):
        return
    violations = {}
    for table, _rowid, parent, _fkid in connection.exec_driver_sql("PRAGMA foreign_key_check"):
        violations[(table, parent)] = violations.get((table, parent), 0) + 1
    if violations:
        raise MigrationError("foreign key check failed, revision rolled back: " + "; ".join(
            f"{count} row(s) of {table} refer to missing {parent} rows"
            for (table, parent), count in sorted(violations.items())))


@sa.event.listens_for(sa.pool.Pool, "checkin")
def sqlite_foreign_keys_back_on(dbapi_connection, connection_record):
    if isinstance(dbapi_connection, sqlite3.Connection):
        dbapi_connection.execute("PRAGMA foreign_keys=ON")


@sa.event.listens_for(sa.engine.Engine, "do_connect")
def sqlite_no_accidental_database(dialect, connection_record, cargs, cparams):
    """A typo in DATABASE_URL must not quietly create and migrate an empty database."""
    path = sqlite_path()
    if path is None or path.exists():
        return
    missing = app.config["MIGRATE_MISSING_DATABASE"]
    if missing == "create":
        print(f"Creating new database at {path}")
    elif missing == "compare with empty":
        # The tutorial runs `db migrate` before any database exists: compare the models
        # with an empty database in memory, and leave the file to `db upgrade`.
        print(f"No database at {path} yet: comparing the models with an empty database")
        cargs[:] = [":memory:"]
        cparams["uri"] = False
    else:
        raise MigrationError(
            f"no database at {path} (check DATABASE_URL); only `db upgrade` creates one")


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
    if url.query.get("uri") == "true":
        return Path(url.database[len("file:"):])
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


def script_directory(directory=None, x_arg=None):
    """The migration scripts, as Flask-Migrate's `-d DIRECTORY` option finds them."""
    return ScriptDirectory.from_config(migrate.get_config(directory, x_arg=x_arg))


def current_heads(connection):
    return MigrationContext.configure(connection).get_current_heads()


@contextmanager
def no_empty_version_table_left(had_table):
    """Alembic creates alembic_version outside the first revision's transaction; if that
    revision fails, drop the table again so the database is as it was."""
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


def verify_checksums(script, connection):
    """Refuse to run when an applied revision's file changed since it was applied."""
    if not sa.inspect(connection).has_table(CHECKSUM_TABLE):
        return
    recorded = connection.execute(sa.select(checksums.c.revision, checksums.c.checksum)).all()
    for revision, checksum in recorded:
        try:
            path = script.get_revision(revision).path
        except RevisionError:
            raise MigrationError(f"revision {revision} is applied but its file is gone") from None
        if file_checksum(path) != checksum:
            raise MigrationError(
                f"{path} changed after revision {revision} was applied (its sha256 differs); "
                "put the file back, or run `db repair` if the change was deliberate")


def refuse_unversioned_database(connection):
    """An existing database that these migrations did not make (it has tables but no
    alembic_version) must be adopted by hand."""
    tables = [t for t in sa.inspect(connection).get_table_names() if t != CHECKSUM_TABLE]
    if tables:
        raise MigrationError(
            f"the database already has tables ({', '.join(tables)}) but no alembic_version, "
            "so no revision is recorded as applied: compare it with the models (`db check`), "
            "then adopt it with `db stamp REVISION`")


def tables_dropped_by(revisions):
    """Tables named in op.drop_table(...) calls in the downgrade() of these scripts."""
    for script in revisions:
        for node in ast.walk(ast.parse(Path(script.path).read_text())):
            if not (isinstance(node, ast.FunctionDef) and node.name == "downgrade"):
                continue
            for call in ast.walk(node):
                if (isinstance(call, ast.Call) and getattr(call.func, "attr", "") == "drop_table"
                        and call.args and isinstance(call.args[0], ast.Constant)):
                    yield call.args[0].value


def count_rows(connection, table):
    """How many rows the table holds (0 if there is no such table)."""
    if not sa.inspect(connection).has_table(table):
        return 0
    return connection.execute(sa.select(sa.func.count()).select_from(sa.table(table))).scalar()


def ask(question):
    """Ask on the terminal; anything but yes is no."""
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def rows_to_be_dropped(connection, revisions):
    """{table: rows} for the tables holding rows that these downgrades drop."""
    counts = {table: count_rows(connection, table) for table in tables_dropped_by(revisions)}
    return {table: rows for table, rows in counts.items() if rows}


def confirm_downgrade(holding_rows, destination, x_opts):
    """A downgrade to base, or one that drops tables holding rows, needs a yes."""
    if destination != "base" and not holding_rows:
        return
    what = "downgrade to base" if destination == "base" else "this downgrade"
    if holding_rows:
        what += " drops " + ", ".join(f"{t} ({n} rows)" for t, n in holding_rows.items())
    if "yes" in x_opts:
        return
    if not sys.stdin.isatty():
        raise MigrationError(f"{what}; nothing changed. To go ahead, add -x yes")
    if not ask(f"{what}. Continue?"):
        raise MigrationError("downgrade cancelled; nothing changed")


def run_migration(direction, directory, revision, sql, tag, x_arg):
    """Upgrade or downgrade under the migration lock, after the checks and a snapshot."""
    run = getattr(flask_migrate, direction)
    if sql:  # offline: prints SQL, touches no database
        return run(directory, revision, sql, tag, x_arg)
    x_opts = x_options(x_arg)
    script = script_directory(directory, x_arg)
    path = sqlite_path()
    existing_file = path is not None and path.exists()
    app.config["MIGRATE_MISSING_DATABASE"] = "create" if direction == "upgrade" else "refuse"
    db.engine.connect().close()  # fails here, before the lock file, on a missing database
    with migration_lock():
        # Everything the checks read, on one connection, closed before anything is asked or
        # run (on PostgreSQL an open read would hold locks the revisions need).
        with db.engine.connect() as conn:
            had_version_table = sa.inspect(conn).has_table("alembic_version")
            if direction == "upgrade" and not had_version_table:
                refuse_unversioned_database(conn)
            verify_checksums(script, conn)
            heads = current_heads(conn)
            revisions = planned_revisions(script, direction, revision, heads)
            if not revisions:
                return  # already there: no snapshot, no run
            destination = planned_destination(direction, revisions)
            if direction == "downgrade":
                holding_rows = rows_to_be_dropped(conn, revisions)
        if direction == "downgrade":
            confirm_downgrade(holding_rows, destination, x_opts)
        if existing_file and x_opts.get("backup") != "off":
            take_snapshot(path, f"{revision_label(heads)}-{destination}")
        db.engine.update_execution_options(migration=True)
        with no_empty_version_table_left(had_version_table):
            run(directory, revision, sql, tag, x_arg)


# --- autogenerate that keeps data ------------------------------------------------------


def rename_answers(x_arg):
    """`-x rename=company.clocation:location` and `-x rename=company:firm`, as
    {"company.clocation": "company.location", "company": "firm"}."""
    answers = {}
    for key, _, value in (x.partition("=") for x in x_arg or []):
        if key == "rename":
            old, _, new = value.partition(":")
            table = old.rpartition(".")[0]
            answers[old] = f"{table}.{new}" if table else new
    return answers


def confirm_rename(old, new, answers):
    """True or False if -x or the user on a terminal says whether old became new; None if
    nobody can be asked."""
    if old in answers:
        return answers[old] == new
    if sys.stdin.isatty():
        return ask(f"Did you rename {old} to {new}?")
    return None


def same_kind(old_type, new_type):
    return old_type._type_affinity is new_type._type_affinity


def column_renames(table_ops, answers, unanswered):
    """Turn a dropped and an added column of one table into renames, where confirmed."""
    drops = [op for op in table_ops.ops if isinstance(op, ops.DropColumnOp)]
    adds = [op for op in table_ops.ops if isinstance(op, ops.AddColumnOp)]
    renames = []
    for drop in drops:
        old_column = drop.to_column()
        for add in adds:
            if add in table_ops.ops and same_kind(old_column.type, add.column.type):
                old = f"{table_ops.table_name}.{drop.column_name}"
                new = f"{table_ops.table_name}.{add.column.name}"
                answer = confirm_rename(old, new, answers)
                if answer is None:
                    unanswered.append((old, new))
                if answer:
                    table_ops.ops.remove(drop)
                    table_ops.ops.remove(add)
                    renames.append(ops.AlterColumnOp(
                        table_ops.table_name, drop.column_name, modify_name=add.column.name,
                        existing_type=old_column.type, existing_nullable=old_column.nullable,
                        existing_server_default=old_column.server_default or False))
                    break
    return renames


def unique_constraint_renames(old_table, new_table):
    """Unique constraints whose conventional names follow the table's name."""
    old_names = {tuple(c.columns.keys()): c.name for c in old_table.constraints
                 if isinstance(c, sa.UniqueConstraint)}
    changes = []
    for constraint in new_table.constraints:
        columns = tuple(constraint.columns.keys())
        old_name = old_names.get(columns)
        if isinstance(constraint, sa.UniqueConstraint) and old_name not in (None, constraint.name):
            changes += [
                ops.DropConstraintOp(old_name, new_table.name, type_="unique",
                                     _reverse=ops.CreateUniqueConstraintOp(
                                         old_name, new_table.name, list(columns))),
                ops.CreateUniqueConstraintOp(constraint.name, new_table.name, list(columns)),
            ]
    return [ops.ModifyTableOps(new_table.name, changes)] if changes else []


def table_renames(upgrade_ops, answers, unanswered):
    """Turn a dropped and a created table with the same columns into renames."""
    drops = [op for op in upgrade_ops.ops if isinstance(op, ops.DropTableOp)]
    creates = [op for op in upgrade_ops.ops if isinstance(op, ops.CreateTableOp)]
    renames, follow_ups = [], []
    for drop in drops:
        old_table = drop.to_table()
        for create in creates:
            new_table = create.to_table()
            if create not in upgrade_ops.ops or old_table.c.keys() != new_table.c.keys():
                continue
            if not all(same_kind(o.type, n.type) for o, n in zip(old_table.c, new_table.c)):
                continue
            answer = confirm_rename(drop.table_name, create.table_name, answers)
            if answer is None:
                unanswered.append((drop.table_name, create.table_name))
            if answer:
                upgrade_ops.ops.remove(drop)
                upgrade_ops.ops.remove(create)
                renames.append(ops.RenameTableOp(drop.table_name, create.table_name))
                follow_ups += unique_constraint_renames(old_table, new_table)
                break
    return renames, follow_ups


@renderers.dispatch_for(ops.RenameTableOp)
def render_rename_table(autogen_context, op):
    # Alembic has the operation but no autogenerate renderer for it.
    return f"op.rename_table({op.table_name!r}, {op.new_table_name!r})"


def detect_renames(script, answers):
    """Rewrite drop+add pairs the user confirms as renames: native RENAME statements, not
    table copies, outside any batch block. Returns the pairs nobody could confirm."""
    upgrade_ops = script.upgrade_ops
    unanswered = []
    table_moves, follow_ups = table_renames(upgrade_ops, answers, unanswered)
    column_moves = []
    for table_ops in [op for op in upgrade_ops.ops if isinstance(op, ops.ModifyTableOps)]:
        column_moves += column_renames(table_ops, answers, unanswered)
        if not table_ops.ops:
            upgrade_ops.ops.remove(table_ops)
    if not (table_moves or column_moves):
        return unanswered
    rest = upgrade_ops.ops + follow_ups
    upgrade_ops.ops[:] = table_moves + column_moves + rest
    # Columns are renamed back before the other changes are undone (those name the old
    # columns); tables after (those name the new table).
    script.downgrade_ops.ops[:] = (
        [renamed_back(op) for op in reversed(column_moves)]
        + ops.UpgradeOps(rest).reverse().ops
        + [ops.RenameTableOp(op.new_table_name, op.table_name) for op in reversed(table_moves)]
    )
    return unanswered


def renamed_back(rename):
    # AlterColumnOp.reverse() keeps the name: it only swaps types, nullability and defaults.
    return ops.AlterColumnOp(
        rename.table_name, rename.modify_name, modify_name=rename.column_name,
        existing_type=rename.existing_type, existing_nullable=rename.existing_nullable,
        existing_server_default=rename.existing_server_default)


def each_op(container):
    for op in container.ops:
        yield from each_op(op) if isinstance(op, ops.OpContainer) else [op]


def data_loss_warnings(script, connection):
    """Operations of the upgrade that can lose data, and of the downgrade that cannot run
    on a populated table."""
    def rows(table):  # for the messages below
        return count_rows(connection, table)

    warnings = []
    for op in each_op(script.upgrade_ops):
        if isinstance(op, ops.DropTableOp):
            warnings.append(f"upgrade drops table {op.table_name} ({rows(op.table_name)} rows)")
        elif isinstance(op, ops.DropColumnOp):
            warnings.append(f"upgrade drops column {op.table_name}.{op.column_name} "
                            f"(values of {rows(op.table_name)} rows)")
        elif isinstance(op, ops.AlterColumnOp) and narrows(op.existing_type, op.modify_type):
            warnings.append(f"upgrade narrows {op.table_name}.{op.column_name} from "
                            f"{op.existing_type} to {op.modify_type}: values may not fit")
    for stream, streams_ops in (("upgrade", script.upgrade_ops), ("downgrade", script.downgrade_ops)):
        for op in each_op(streams_ops):
            if adds_not_null_without_default(op):
                warnings.append(
                    f"{stream} makes {op.table_name}.{op_column_name(op)} NOT NULL without a "
                    f"default: it fails on a table with rows ({op.table_name} has "
                    f"{rows(op.table_name)} now); fill the column in the {stream}")
    return warnings


def narrows(old_type, new_type):
    if old_type is None or new_type is None:
        return False
    if not same_kind(old_type, new_type):
        return True
    old_length, new_length = getattr(old_type, "length", None), getattr(new_type, "length", None)
    return new_length is not None and (old_length is None or new_length < old_length)


def adds_not_null_without_default(op):
    if isinstance(op, ops.AddColumnOp):
        return not op.column.nullable and op.column.server_default is None
    if isinstance(op, ops.AlterColumnOp):
        return op.modify_nullable is False and not op.existing_server_default
    return False


def op_column_name(op):
    return op.column.name if isinstance(op, ops.AddColumnOp) else op.column_name


def autogenerate_hook(x_arg, warnings):
    """Alembic's process_revision_directives, for `db migrate`: renames, then warnings."""
    answers = rename_answers(x_arg)

    def process_revision_directives(context, revision, directives):
        if not directives:  # env.py found no change
            return
        script = directives[0]
        for old, new in detect_renames(script, answers):
            table, _, column = old.rpartition(".")
            lost = f"every {column} value" if table else f"every row of {old}"
            warnings.append(
                f"{old} is dropped and {new} created: {lost} is lost. If it is a rename, "
                f"run again with -x rename={old}:{new.rpartition('.')[2]}")
        warnings.extend(data_loss_warnings(script, context.connection))

    return process_revision_directives


def describe_difference(diff):
    """One line for an entry of alembic.autogenerate.compare_metadata()."""
    if isinstance(diff, list):  # changes to one column
        kind, _, table, column, _, in_db, in_models = diff[0]
        what = {"modify_type": "type", "modify_nullable": "nullable",
                "modify_default": "default"}.get(kind, kind)
        return f"column {table}.{column}: {what} {in_db} in the database, {in_models} in the models"
    kind, *details = diff
    where, _, thing = kind.partition("_")
    obj = details[-1]
    name = getattr(obj, "name", obj)
    if thing == "column":
        name = f"{details[1]}.{obj.name}"
    place = "in the models, not in the database" if where == "add" else (
        "in the database, not in the models")
    return f"{thing} {name}: {place}"


# --- commands --------------------------------------------------------------------------


def replaces_db_command(name, *options):
    """Make the decorated function the body of Flask-Migrate's `db NAME` subcommand.

    The subcommand keeps Flask-Migrate's options, plus any given here; the function takes
    them as arguments, and its docstring becomes the help text.
    """
    def decorate(func):
        subcommand = MigrateCommand._commands[name]
        subcommand.run = func
        subcommand.__doc__ = func.__doc__
        subcommand.option_list.extend(options)
        return func

    return decorate


@replaces_db_command(
    "revision",
    Option("-x", "--x-arg", dest="x_arg", default=None, action="append",
           help="rename=TABLE.OLD:NEW or rename=OLD_TABLE:NEW_TABLE (with --autogenerate)"),
)
def create_revision(directory=None, message=None, autogenerate=False, sql=False, head="head",
                    splice=False, branch_label=None, version_path=None, rev_id=None,
                    x_arg=None):
    """Create a new revision file (--autogenerate: from the models, asking about renames)."""
    app.config["MIGRATE_MISSING_DATABASE"] = "compare with empty"
    # Flask-Migrate 2.7 does not tell env.py that `revision --autogenerate` autogenerates,
    # so env.py's "no changes, no file" check only ever ran for `db migrate`.
    config = migrate.get_config(directory, opts=["autogenerate"] if autogenerate else None,
                                x_arg=x_arg)
    warnings = []
    try:
        command.revision(config, message, autogenerate=autogenerate, sql=sql, head=head,
                         splice=splice, branch_label=branch_label,
                         version_path=version_path, rev_id=rev_id,
                         process_revision_directives=autogenerate_hook(x_arg, warnings))
    except CommandError as exc:
        if "not up to date" in str(exc):
            raise MigrationError(f"{exc} Run `db upgrade` first.") from None
        raise MigrationError(str(exc)) from None
    for warning in warnings:
        print(f"WARNING: {warning}", file=sys.stderr)


@replaces_db_command("migrate")
def autogenerate_revision(directory=None, message=None, sql=False, head="head", splice=False,
                          branch_label=None, version_path=None, rev_id=None, x_arg=None):
    """Write a revision from the differences between models and database
    (alias for 'revision --autogenerate')."""
    create_revision(directory, message, True, sql, head, splice, branch_label, version_path,
                    rev_id, x_arg)


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
            with db.engine.connect() as conn:
                heads = current_heads(conn)
            take_snapshot(path, f"{revision_label(heads)}-restore")
        with closing(sqlite3.connect(snapshot)) as source, closing(sqlite3.connect(path)) as target:
            source.backup(target)
    print(f"Restored {path} from {snapshot}")


def revision_lines(script):
    """What `db current` prints for each revision ('edee0e2ae9aa (head)'). Finding heads
    means loading every revision file, so the lines are cached in versions/__pycache__
    until a file there changes (by name, size and mtime, as Python checks its bytecode)."""
    versions = Path(script.versions)
    signature = sorted([e.name, e.stat().st_size, e.stat().st_mtime_ns]
                       for e in os.scandir(versions) if e.name.endswith(".py"))
    cache = versions / "__pycache__" / "migrate_example.current.json"
    try:
        cached = json.loads(cache.read_text())
        if cached["signature"] == signature:
            return cached["lines"]
    except (OSError, ValueError, KeyError):
        pass
    lines = {rev.revision: rev.cmd_format(False) for rev in script.walk_revisions()}
    try:
        cache.parent.mkdir(exist_ok=True)
        cache.write_text(json.dumps({"signature": signature, "lines": lines}))
    except OSError:
        pass  # a read-only checkout: no cache, same answer
    return lines


@replaces_db_command("current")
def show_current(directory=None, verbose=False):
    """Display the current revision for each database."""
    config = migrate.get_config(directory)
    if verbose or config.get_main_option("version_locations"):
        return flask_migrate.current(directory, verbose)
    lines = revision_lines(ScriptDirectory.from_config(config))
    with db.engine.connect() as conn:
        heads = current_heads(conn)
    if not all(head in lines for head in heads):  # let Alembic explain
        return flask_migrate.current(directory, verbose)
    for head in heads:
        print(lines[head])


@replaces_db_command("stamp")
def stamp_database(directory=None, revision="head", sql=False, tag=None):
    """'stamp' the revision table with the given revision; don't run any migrations
    (this is how an existing database is adopted)."""
    app.config["MIGRATE_MISSING_DATABASE"] = "create"
    flask_migrate.stamp(directory, revision, sql, tag)


@MigrateCommand.option("-d", "--directory", dest="directory", default=None,
                       help="Migration script directory (default is 'migrations')")
def repair(directory=None):
    """Record the checksums of the applied revisions' files anew, after a deliberate edit."""
    script = script_directory(directory)
    with migration_lock(), db.engine.begin() as conn:
        heads = current_heads(conn)
        applied = list(script.iterate_revisions(heads, "base"))
        forget_checksums(conn)
        remember_checksums(conn, applied)
    print(f"Recorded the checksums of {len(applied)} applied revision(s)")


@replaces_db_command(
    "history",
    Option("--applied", dest="applied", action="store_true", default=False,
           help="show when each revision was applied to this database"),
)
def show_history(directory=None, rev_range=None, verbose=False, indicate_current=False,
                 applied=False):
    """List changeset scripts in chronological order (--applied: with their dates)."""
    if not applied:
        return flask_migrate.history(directory, rev_range, verbose, indicate_current)
    script = script_directory(directory)
    with db.engine.connect() as conn:
        dates = {}
        if sa.inspect(conn).has_table(CHECKSUM_TABLE):
            dates = dict(conn.execute(sa.select(checksums.c.revision, checksums.c.applied_at)).all())
    for rev in script.walk_revisions():
        when = dates.get(rev.revision)
        when = f"applied {when:%Y-%m-%d %H:%M:%S}" if when else "not applied"
        print(f"{rev.revision}  {when:<27}  {rev.doc}")


@MigrateCommand.option("-d", "--directory", dest="directory", default=None,
                       help="Migration script directory (default is 'migrations')")
def check(directory=None):
    """Exit 0 if the models match the migrations' head and the database is at head; else
    exit 1 and list each difference on a line."""
    script = script_directory(directory)
    problems = []
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={
            "compare_type": True, "include_name": not_our_bookkeeping,
            "target_metadata": db.metadata})
        heads, script_heads = context.get_current_heads(), script.get_heads()
        if set(heads) != set(script_heads):
            problems.append(f"database at {revision_label(heads)}, migrations' head is "
                            f"{revision_label(script_heads)}: run `db upgrade`")
        problems += [describe_difference(d) for d in compare_metadata(context, db.metadata)]
    if problems:
        print("\n".join(problems))
        sys.exit(1)
    print("The models, the migrations' head and the database agree.")


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
