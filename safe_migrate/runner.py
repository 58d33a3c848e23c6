"""What every migration run goes through, whichever CLI started it.

`migrations/env.py` calls `run_migrations()`. It connects on the app's own engine, holds the
migration lock for the commands that change the database, and wraps the list of steps that
Alembic's command computed, so that before the first revision runs it can refuse (an
edited applied revision, an unversioned database, a destructive downgrade nobody
confirmed) and snapshot a SQLite file.
"""
from __future__ import annotations

import functools
import logging
import sqlite3
import time
import warnings
from contextlib import closing, contextmanager, nullcontext, suppress
from pathlib import Path

import sqlalchemy as sa
from flask import current_app

from . import connections, guards, interrupts, journal, mysql, postgres
from .autogenerate import (
    leave_expression_indexes,
    library_warnings_as_notes,
    revision_directives_hook,
)
from .checksums import (
    ensure_checksum_table,
    record_checksum,
    verify_checksums,
)
from .compat import default_engine_is
from .errors import Interrupted, MigrationError, interrupt_in
from .hooks import (
    app_options,
    directives_with,
    include_name_with,
    include_object_with,
    on_version_apply_with,
)
from .options import run_options
from .postgres import retrying
from .progress import ticking
from .rehearsal import LockWatch, never_commits, rows_before_after
from .snapshots import (
    BOOKKEEPING,
    give_identity,
    has_identity,
    rotate_snapshots,
    say_what_protects,
    take_snapshot,
)
from .sqlite_copies import install as install_sqlite_copies
from .sqlite_copies import losses as sqlite_copy_losses
from .state import MigrateState, current_state
from .transactions import commit_reads, reads_left_closed, write_transactions, writing

# What connecting does about a missing SQLite file, by command (see sqlite.missing_file_guard).
MISSING_FILE = {"upgrade": "create", "stamp": "create", "revision": "compare with empty"}
# The commands that change the database, and so run under the migration lock.
LOCKED = {"upgrade", "downgrade", "stamp", None}


class QuietStart(logging.Filter):
    """Alembic's lines at the start of every command ("Context impl SQLiteImpl.", "Will
    assume transactional DDL.", one per autogenerate plugin where an alembic.ini older than
    Alembic 1.19 leaves them at INFO) and, on PostgreSQL, one per SERIAL column at every
    autogenerate ("Detected sequence named ... assuming SERIAL and omitting") say nothing a
    user can act on. Its "Running upgrade a -> b" line is Run.time_and_retry's instead,
    followed by the revision's time."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "Running %s" and getattr(record.args[0], "safe_migrate_timed", False):
            return False
        return not str(record.msg).startswith(
            ("Context impl", "Will assume", "setting up autogenerate plugin",
             "Detected sequence named"))


def run_migrations() -> None:
    """Run the Alembic command in progress with this package's guarantees (call from env.py)."""
    from alembic import context

    for name in ("alembic.runtime.migration", "alembic.runtime.plugins", "alembic.ddl.postgresql"):
        log = logging.getLogger(name)
        if not any(isinstance(f, QuietStart) for f in log.filters):
            log.addFilter(QuietStart())
    state = current_state()
    if context.is_offline_mode():
        run_offline(context, state)
        return
    postgresql = state.url.get_backend_name() == "postgresql"
    with postgres.interruptible() if postgresql else nullcontext():
        run_online(context, state)


def run_offline(context, state: MigrateState) -> None:
    command = context.config.attributes.get("safe_migrate.command")
    if state.url.get_backend_name() == "sqlite" and command != "stamp":
        raise MigrationError(
            f"{command or 'this command'} --sql is not available on SQLite: batch migrations "
            "copy tables, and must read their definitions from the live database; run it "
            "without --sql")
    context.configure(url=state.url, target_metadata=state.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online(context, state: MigrateState) -> None:
    # Our commands say which command runs (Config.attributes is Alembic's way to pass things
    # to env.py); a run started some other way gets the careful defaults.
    command = context.config.attributes.get("safe_migrate.command")
    rehearsal = context.config.attributes.get("safe_migrate.rehearsal")  # rehearsal.Place
    if rehearsal is not None and rehearsal.connection is not None:  # its one transaction
        with interrupts.held():
            Run(context, state, rehearsal.connection, True, command, rehearsal.budget,
                rehearsal=rehearsal).run()
        return
    if command in LOCKED:
        connections.refuse_unsupported(state.url, command)
    path = rehearsal.path if rehearsal is not None else state.path
    existed = path is not None and path.exists()
    budget = state.wait_budget()
    engine = state.migration_engine(budget, MISSING_FILE.get(command, "refuse"), path)
    progress = Progress()
    try:
        engine.connect().close()  # a missing file fails here, before any lock file
        lock = state.lock(budget) if command in LOCKED else nullcontext()
        with interrupts.held(), lock, engine.connect() as connection:
            Run(context, state, connection, existed, command, budget, progress, path,
                rehearsal).run()
    except BaseException as exc:
        if path is not None and not existed:
            remove_if_empty(path)
        interrupt = interrupt_in(exc)
        if interrupt is not None and not isinstance(exc, Interrupted):
            committed = getattr(interrupt, "committed_statements", [])
            raise Interrupted(progress.interrupted(committed)) from None
        raise
    finally:
        engine.dispose()


class Progress:
    """How far a run got, for a true line when Ctrl-C stops it: which revisions committed,
    which one was rolled back."""

    def __init__(self) -> None:
        self.applied: list[str] = []
        self.running: str | None = None
        self.snapshotting = False
        self.ddl_commits = False  # MySQL/MariaDB: a revision's DDL statements commit alone

    def committed(self) -> None:
        """The running revision's transaction has committed."""
        if self.running:
            self.applied.append(self.running.rsplit(" ", 1)[-1])
            self.running = None

    def interrupted(self, committed: list[str] = ()) -> str:
        """The line for Ctrl-C; `committed` are the statements of the running revision that
        had committed outside its transaction (postgres.OutsideTransaction): they stay."""
        done = (f"the {len(self.applied)} revision(s) of this run before it stay applied "
                f"({', '.join(self.applied)})" if self.applied
                else "no revision of this run had been applied before it")
        if self.running and self.ddl_commits:
            stay = "; ".join(f"{n}) {s}" for n, s in enumerate(committed, 1)) or "none"
            return (f"interrupted during {self.running}: its statements that had committed "
                    f"stay ({stay}), and the one running may have committed too (MySQL and "
                    "MariaDB commit each DDL statement); its version is not recorded: run "
                    f"`db upgrade` again to finish it; {done}")
        if self.running and committed:
            stay = "; ".join(f"{n}) {s}" for n, s in enumerate(committed, 1))
            return (f"interrupted during {self.running}: {len(committed)} of its statements "
                    f"had committed, and they stay: {stay}; the rest of it was rolled back and "
                    f"its version is not recorded; {done}")
        if self.running:
            return f"interrupted during {self.running}: it was rolled back; {done}"
        if self.snapshotting:
            return "interrupted while taking the snapshot: no revision had run, nothing changed"
        if self.applied:
            return (f"interrupted after {len(self.applied)} revision(s) committed "
                    f"({', '.join(self.applied)}); no revision was running")
        return "interrupted before any revision ran: nothing changed"


@contextmanager
def app_session_on(db, connection, bind: str | None = None):
    """The app's `db.session` (and so `Model.query`) works on the run's connection while
    the revisions run: a data migration written with the app's models sees the revision's
    schema and is part of its transaction, instead of waiting for the run's own lock.
    (A commit through it commits nothing of the revision's: the session only joins the
    transaction the runner began.) Tables of other binds keep their engines."""
    factory = getattr(getattr(db, "session", None), "session_factory", None)
    if factory is None or not hasattr(db, "get_binds"):
        with default_engine_is(db, connection, bind):  # Flask-SQLAlchemy 3
            yield
        return
    app = current_app._get_current_object()
    ours = {table: connection for table in db.get_tables_for_bind(bind)}
    saved, saved_class = dict(factory.kw), factory.class_
    db.session.remove()
    factory.configure(bind=connection, binds={**db.get_binds(app), **ours})
    if bind is not None:
        factory.class_ = joined_session(saved_class, connection, ours)
    try:
        yield
    finally:
        db.session.remove()
        factory.kw.clear()
        factory.kw.update(saved)
        factory.class_ = saved_class


def joined_session(session_class, connection, tables):
    """Flask-SQLAlchemy 2's session sends a bind's models to the bind's own engine, whatever
    its `binds` say: this subclass sends the run's tables to the run's connection."""
    class JoinedSession(session_class):
        def get_bind(self, mapper=None, clause=None, **kw):
            if getattr(mapper, "persist_selectable", None) in tables:
                return connection
            return super().get_bind(mapper, clause, **kw)

    return JoinedSession


@contextmanager
def copies_reflect_quietly():
    """Alembic's SQLite table copy reflects the table, and SQLAlchemy warns that it skips
    expression indexes; sqlite_copies recreates them from their own SQL, so that warning
    (with a source line) says nothing true to the user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based",
                                sa.exc.SAWarning)
        yield


def remove_if_empty(path: Path) -> None:
    """A run that created the SQLite file and then failed leaves no file behind."""
    with suppress(sqlite3.DatabaseError, OSError):
        with closing(sqlite3.connect(path)) as conn:
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if not tables:
            path.unlink()


class Run:
    """One env.py run on one connection."""

    def __init__(self, context, state: MigrateState, connection, existed: bool,
                 command: str | None, budget, progress: Progress | None = None,
                 path: Path | None = None, rehearsal=None) -> None:
        self.context = context
        self.path = path  # the SQLite file this run changes (a rehearsal's copy), or None
        self.rehearsing = rehearsal is not None
        # A PostgreSQL rehearsal runs every revision in the one transaction it rolls back.
        self.in_one_transaction = rehearsal is not None and rehearsal.connection is not None
        self.progress = progress or Progress()
        self.budget = budget  # the run's MIGRATE_LOCK_TIMEOUT (locks.WaitBudget)
        self.settings = state.settings
        self.command = command
        self.state = state
        self.connection = connection
        self.file_existed = existed
        self.options = run_options(context.get_x_argument())  # any command's keys: see options.py
        with reads_left_closed(connection):  # else Alembic would commit none of the run
            self.had_version_table = sa.inspect(connection).has_table("alembic_version")
        # {table: rows} a downgrade must not drop unasked (see after_revision).
        self.rows_held: dict[str, int] = {}
        self.identified = False
        self.snapshot_taken = False
        self.last_seconds: float | None = None  # the running revision's time, for its record
        self.checksum_table_ready = False
        # MySQL/MariaDB: each committed statement of a revision is journaled (journal.py).
        self.journaled = connection.dialect.name == "mysql" and not self.in_one_transaction

    def run(self) -> None:
        autogenerate = getattr(self.context.config.cmd_opts, "autogenerate", False)
        # Alembic names the constraints a revision leaves unnamed with target_metadata's
        # convention; an old history's revisions must run with the names they were written for.
        convention = self.context.config.get_section("safe_migrate", {}).get("naming_convention")
        in_rehearsal = self.in_one_transaction
        configure_args = self.state.configure_args
        del configure_args["fn"]  # the command's own list of steps stays (see checked)
        app = app_options(self.state)
        options = dict(
            connection=self.connection,
            target_metadata=self.state.metadata if autogenerate or convention else sa.MetaData(),
            **{**configure_args,
               **({"transaction_per_migration": False} if in_rehearsal else {}),
               # Ours, and the app's own (Migrate(app, db, include_name=...): hooks.py).
               "on_version_apply": on_version_apply_with(self.after_revision,
                                                         app.get("on_version_apply")),
               "include_name": include_name_with(not_our_bookkeeping, app.get("include_name")),
               "include_object": include_object_with(leave_expression_indexes,
                                                     app.get("include_object")),
               "process_revision_directives": directives_with(
                   revision_directives_hook(self.options, autogenerate),
                   app.get("process_revision_directives"))})
        self.context.configure(**options)
        install_sqlite_copies(self.context.get_context())  # native ALTER, judged copies
        # Alembic's command gave the context the function that lists the steps to run (the
        # public `opts["fn"]`); the context calls it through `_migrations_fn`, which Alembic
        # has kept since 0.x. Ours checks the steps first. (Configuring again with fn= would
        # do the same through public names, at the price of every log line twice.)
        migration_context = self.context.get_context()
        migration_context._migrations_fn = self.checked(migration_context.opts["fn"])
        if in_rehearsal:
            with app_session_on(self.state.db, self.connection, self.state.bind):
                self.context.run_migrations()
            return
        try:
            with self.context.begin_transaction(), \
                    app_session_on(self.state.db, self.connection, self.state.bind), \
                    library_warnings_as_notes() if autogenerate else copies_reflect_quietly():
                self.context.run_migrations()
            self.progress.committed()
        except BaseException:
            if not self.had_version_table:
                self.drop_empty_version_table()
            raise
        if self.snapshot_taken:
            rotate_snapshots(self.path, self.settings.snapshots_kept,
                             self.settings.snapshots_max_bytes)

    def checked(self, steps):
        def checked_steps(heads, migration_context):
            from alembic.runtime.migration import RevisionStep
            from alembic.util import CommandError

            if self.command == "downgrade" and not heads:
                raise MigrationError("nothing to downgrade: the database is at base")
            try:
                planned = list(steps(heads, migration_context))
            except CommandError as exc:
                if "Multiple head revisions" not in str(exc):
                    raise
                script_heads = ", ".join(migration_context.script.get_heads())
                raise MigrationError(
                    f"'head' is ambiguous: the history has several heads ({script_heads}); join "
                    "them with `db merge heads -m MESSAGE`, or name one revision") from None
            revisions = [step for step in planned if isinstance(step, RevisionStep)]
            if revisions or self.command in ("upgrade", "downgrade"):
                verify_checksums(self.context.script, self.connection)
            if revisions and self.journaled:
                if revisions[0].is_upgrade:  # before anything runs, the journal table too
                    mysql.refuse_rows_before_ddl(revisions, self.connection.dialect)
                journal.refuse_other_steps(self.connection, revisions)
                journal.ensure_journal_table(self.connection)
            if revisions:
                self.before_revisions(heads, revisions)
            elif self.command == "upgrade" and not self.rehearsing:
                print(already_at(heads, migration_context.script.get_heads()))
            for step in revisions:
                self.time_and_retry(step)
            self.settle()  # the checks' reads; each step's transaction is a write
            if planned and not self.in_one_transaction:
                write_transactions(self.connection)
            return planned

        return checked_steps

    def time_and_retry(self, step) -> None:
        """Log the revision's line when it starts, and its time when it ends (on a terminal,
        a line of its elapsed time in between: progress.py); on PostgreSQL, retry it when a
        lock is not granted within MIGRATE_PG_LOCK_TIMEOUT."""
        run = step.migration_fn
        name = Path(step.revision.path).name
        migration_context = self.context.get_context()
        if self.in_one_transaction:  # a rehearsal never commits: see rehearsal.never_commits
            run, migration_context = never_commits(run, self.connection, migration_context,
                                                   name), None
        if self.connection.dialect.name == "postgresql":
            run = retrying(run, self.connection, self.settings, name, migration_context)
        elif self.connection.dialect.name == "mysql" and not self.in_one_transaction:
            self.progress.ddl_commits = True
            run = mysql.journaled(run, self.connection, self.settings, name, step)
        log = logging.getLogger("alembic.runtime.migration")
        step.safe_migrate_timed = True  # QuietStart leaves Alembic's own start line out

        @functools.wraps(step.migration_fn)  # Alembic's log line names it: upgrade, downgrade
        def timed(**kwargs):
            self.progress.committed()  # the revision before this one, if any
            self.progress.running = (f"the {'upgrade' if step.is_upgrade else 'downgrade'} "
                                     f"of {step.revision.revision}")
            rows = all_rows(self.connection) if self.rehearsing else None
            watch = (LockWatch(self.connection, BOOKKEEPING) if self.in_one_transaction
                     else None)
            log.info("Running %s ...", step)
            start = time.monotonic()
            try:
                with ticking():
                    run(**kwargs)
            except BaseException:
                log.info("  failed after %.2f s", time.monotonic() - start)
                raise
            self.last_seconds = time.monotonic() - start
            log.info("  done in %.2f s", self.last_seconds)
            locks = watch.report() if watch else []  # before the counts below take locks
            if rows is not None:
                log.info("  rows: %s", rows_before_after(rows, all_rows(self.connection)))
            for line in locks:
                log.info(line)

        step.migration_fn = timed

    def before_revisions(self, heads, steps) -> None:
        """The last checks, the question and the snapshot, before the first revision runs."""
        upgrade = steps[0].is_upgrade
        if upgrade and not self.had_version_table and not (
                self.journaled and journal.half_applied(self.connection)):  # resumed
            refuse_unversioned_database(self.connection)
        destination = destination_label(steps)
        dropped = {} if upgrade else guards.rows_to_be_dropped(
            self.connection, steps, self.state.downgrade_function)
        self.settle()  # no read stays open while the question waits
        if not upgrade and not guards.confirm_downgrade(dropped, destination, self.options.yes):
            # Nobody said yes to losing rows: whatever statement drops or empties a table
            # that holds rows, in any schema, after_revision notices before the revision commits.
            self.rows_held = guards.row_counts(self.connection)
        if self.file_existed and self.options.backup:
            if not has_identity(self.connection):  # the snapshot must carry it (db restore)
                with writing(self.connection):
                    give_identity(self.connection)
            self.identified = True
            self.progress.snapshotting = True
            take_snapshot(self.path, revision_label(heads), destination, self.budget.left,
                          self.settings.snapshots_kept, self.settings.snapshots_max_bytes)
            self.progress.snapshotting = False
            self.snapshot_taken = True
        elif self.options.backup and not self.rehearsing:
            say_what_protects(self.connection.engine.url)  # MySQL: no file to copy

    def settle(self) -> None:
        """End the transaction the run's reads began (transactions.py); a rehearsal's one
        transaction stays open."""
        if not self.in_one_transaction:
            commit_reads(self.connection)

    def after_revision(self, ctx, step, heads, run_args) -> None:
        """Alembic's on_version_apply hook, in the revision's own transaction: record its
        checksum, and roll back a downgrade that dropped tables holding rows unasked."""
        interrupts.raise_held()  # a Ctrl-C Python could not raise rolls this revision back
        if not self.checksum_table_ready:  # once a run, not once a revision
            ensure_checksum_table(ctx.connection)
            self.checksum_table_ready = True
        record_checksum(ctx, step, self.last_seconds)
        if self.journaled and step.is_upgrade:
            journal.forget(ctx.connection, step.up_revision_id)
        self.last_seconds = None
        if self.path is not None and not self.identified:
            give_identity(ctx.connection)
            self.identified = True
        self.keep_what_copies_lost(ctx, step)
        if self.rows_held:  # rows, not statements: see guards.py
            self.rows_held = guards.check_rows_kept(ctx.connection, self.rows_held,
                                                    step.up_revision_id)

    def keep_what_copies_lost(self, ctx, step) -> None:
        """Roll the revision back if its SQLite table copies lost something they could not
        keep (sqlite_copies) and the user did not accept losing it."""
        losses = [(table, what) for table, what in sqlite_copy_losses(ctx)
                  if table not in self.options.lose]
        if losses:
            path = step.revision_map.get_revision(step.up_revision_id).path
            tables = sorted({table for table, _ in losses})
            raise MigrationError(
                f"{path}: its table copies would lose " + ", ".join(w for _, w in losses)
                + "; revision rolled back. To lose them, add "
                + " ".join(f"-x lose={table}" for table in tables))

    def drop_empty_version_table(self) -> None:
        """Alembic creates alembic_version outside the first revision's transaction; if that
        revision fails, drop it again so the database is as it was."""
        # Any error here is suppressed: if this fails too, the first error is the one to show.
        with suppress(Exception), writing(self.connection):
            if not sa.inspect(self.connection).has_table("alembic_version"):
                return
            if self.connection.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar() == 0:
                self.connection.execute(sa.text("DROP TABLE alembic_version"))


def not_our_bookkeeping(name, type_, parent_names) -> bool:
    """Alembic's include_name hook: autogenerate leaves our bookkeeping tables and SQLite's own
    tables (sqlite_sequence, sqlite_stat1, ...) alone."""
    return not (type_ == "table" and (name in BOOKKEEPING or name.startswith("sqlite_")))


def already_at(heads, script_heads) -> str:
    """What a `db upgrade` with nothing to run says."""
    if heads and set(heads) == set(script_heads):
        return f"Already at head ({', '.join(sorted(heads))})."
    return f"Already at {revision_label(heads)}: nothing to upgrade."


def revision_label(revisions) -> str:
    return "+".join(revisions) if revisions else "base"


def destination_label(steps) -> str:
    last = steps[-1].revision
    if steps[0].is_upgrade:
        return revision_label([last.revision])
    down = last.down_revision
    return revision_label([down] if isinstance(down, str) else down or [])


def refuse_unversioned_database(connection) -> None:
    """An existing database that these migrations did not make (it has tables but no
    alembic_version) must be adopted by hand."""
    tables = [t for t in sa.inspect(connection).get_table_names()
              if t not in BOOKKEEPING]
    if tables:
        raise MigrationError(
            f"the database already has tables ({', '.join(tables)}) but no alembic_version, "
            "so no revision is recorded as applied: compare it with the models (`db check`), "
            "then adopt it with `db stamp REVISION`")


def all_rows(connection) -> dict:
    """{table: rows} for every table of the app, in every schema (see guards.py)."""
    return guards.rows_by_label(connection)
