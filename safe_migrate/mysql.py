"""MySQL and MariaDB: what the package does differently there, because each DDL statement
commits on its own (an implicit commit before and after it) and cannot be rolled back.

This module owns:
- the migration lock: `GET_LOCK` on a session of its own, named after the database (freed by
  the server if that session dies), its holder named through `IS_USED_LOCK` and PROCESSLIST;
- the timeouts of a migration session (never the app's engine): `lock_wait_timeout` and
  `innodb_lock_wait_timeout` from MIGRATE_DDL_LOCK_TIMEOUT (whole seconds, at least 1), and
  `max_statement_time` (MariaDB, seconds) or `max_execution_time` (MySQL, ms) from the
  statement timeout when one is set;
- a revision's run statement by statement (`Journaled`): a lock wait timeout (1205: the
  statement changed nothing) is retried with backoff, naming the sessions that hold the
  table (`blockers`); every statement that committed is journaled (journal.py), a resumed
  revision skips the statements its journal says committed, and a failure says what stays;
- the check before anything runs that a revision writes no row before a DDL statement (the
  DDL's implicit commit would keep those rows even if the revision later failed), and the
  same check as each statement runs, for a revision that cannot be rendered offline.
"""
from __future__ import annotations

import hashlib
import io
import logging
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import sqlalchemy as sa

from . import journal
from .errors import MigrationError, describe, interrupt_in
from .postgres import backoff, one_line
from .settings import Settings

if TYPE_CHECKING:
    from .locks import WaitBudget

LOCK_WAIT_TIMEOUT = 1205  # ER_LOCK_WAIT_TIMEOUT: InnoDB row locks and metadata locks alike
IN_TRANSACTION = 1        # SERVER_STATUS_IN_TRANS in the server's status flags
# A session's idle limit while it holds the migration lock: a year (MySQL's maximum).
LONGEST_IDLE = 31_536_000


# --- the migration lock ------------------------------------------------------------------

# One lock per database (GET_LOCK names are server-wide, at most 64 characters).
LOCK_NAME = "CONCAT('safe_migrate.', SHA1(DATABASE()))"


@contextmanager
def migration_lock(engine: sa.engine.Engine, budget: WaitBudget) -> Iterator[None]:
    """Hold the database's migration lock (GET_LOCK on a connection of its own) for the
    block; wait up to what is left of MIGRATE_LOCK_TIMEOUT for another run to end."""
    with engine.connect() as conn:
        # The lock lasts as long as this session: no server limit may end it while the
        # revisions run on another connection.
        conn.exec_driver_sql("SET SESSION wait_timeout = %s", (LONGEST_IDLE,))
        conn.exec_driver_sql("SET SESSION max_statement_time = 0" if conn.dialect.is_mariadb
                             else "SET SESSION max_execution_time = 0")
        commit_reads(conn)
        with budget.spend():
            got = conn.execute(sa.text(f"SELECT GET_LOCK({LOCK_NAME}, :seconds)"),
                               {"seconds": budget.left}).scalar()
        if got != 1:
            raise MigrationError(
                f"another migration of this database is running ({lock_holder(conn)}); "
                f"gave up after {budget.seconds:g} s (MIGRATE_LOCK_TIMEOUT)")
        commit_reads(conn)
        try:
            yield
        finally:
            try:
                conn.execute(sa.text(f"SELECT RELEASE_LOCK({LOCK_NAME})"))
                commit_reads(conn)
            except sa.exc.DBAPIError as exc:  # the session's end releases the lock anyway
                print(f"WARNING: could not release the migration lock ({describe(exc)}); "
                      "the server releases it when the session ends", file=sys.stderr)


def commit_reads(conn: sa.engine.Connection) -> None:
    """End the transaction SQLAlchemy 2's autobegin opened for a read."""
    transaction = conn.get_transaction()
    if transaction is not None and transaction.is_active:
        transaction.commit()


def lock_holder(conn: sa.engine.Connection) -> str:
    """The session holding the migration lock, as PROCESSLIST shows it."""
    row = conn.execute(sa.text(
        "SELECT p.ID, p.USER, p.HOST, p.TIME FROM information_schema.PROCESSLIST p"
        f" WHERE p.ID = IS_USED_LOCK({LOCK_NAME})")).first()
    if row is None:
        return "holder unknown"
    return f"connection {row.ID}, {row.USER} from {row.HOST}, for {row.TIME} s"


# --- the migration sessions' timeouts ----------------------------------------------------


def whole_seconds(seconds: float) -> int:
    """lock_wait_timeout takes whole seconds, at least 1 (0 is not allowed)."""
    return max(1, math.ceil(seconds))


def install(engine: sa.engine.Engine, settings: Settings) -> None:
    """Give each session of a migration run's engine its lock wait limits (and a statement
    time limit when MIGRATE_PG_STATEMENT_TIMEOUT sets one): session variables, so they
    reach this engine's connections alone."""
    def on_connect(dbapi_connection, record) -> None:
        wait = whole_seconds(settings.ddl_lock_timeout)
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET SESSION lock_wait_timeout = %s", (wait,))
            cursor.execute("SET SESSION innodb_lock_wait_timeout = %s", (wait,))
            if settings.pg_statement_timeout:
                if engine.dialect.is_mariadb:
                    cursor.execute("SET SESSION max_statement_time = %s",
                                   (settings.pg_statement_timeout,))
                else:  # MySQL: milliseconds, and for SELECT statements only
                    cursor.execute("SET SESSION max_execution_time = %s",
                                   (round(settings.pg_statement_timeout * 1000),))

    sa.event.listen(engine, "connect", on_connect)


def is_lock_wait_timeout(exc: BaseException) -> bool:
    """Error 1205, from the driver or wrapped by SQLAlchemy."""
    orig = getattr(exc, "orig", exc)
    return bool(getattr(orig, "args", None)) and orig.args[0] == LOCK_WAIT_TIMEOUT


def blockers(connection: sa.engine.Connection) -> str:
    """The other sessions that may hold the table's lock: the server's timeout does not say
    which session it waited for. MariaDB's metadata_lock_info plugin, where it is loaded,
    says who holds a metadata lock on which table of this database; else the sessions with
    an open transaction (INNODB_TRX), which is what holds a metadata lock past a statement."""
    plugin = connection.execute(sa.text(
        "SELECT count(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA ="
        " 'information_schema' AND TABLE_NAME = 'METADATA_LOCK_INFO'")).scalar()
    if plugin:
        rows = connection.execute(sa.text(
            "SELECT p.ID, p.USER, p.COMMAND, p.TIME, m.LOCK_MODE, m.TABLE_NAME"
            " FROM information_schema.METADATA_LOCK_INFO m"
            " JOIN information_schema.PROCESSLIST p ON p.ID = m.THREAD_ID"
            " WHERE m.TABLE_SCHEMA = DATABASE() AND m.LOCK_TYPE = 'Table metadata lock'"
            " AND p.ID <> CONNECTION_ID() ORDER BY p.ID, m.TABLE_NAME")).all()
        held = [f"connection {r.ID} ({r.USER}, {r.COMMAND} for {r.TIME} s, {r.LOCK_MODE} on "
                f"{r.TABLE_NAME})" for r in rows]
    else:
        rows = connection.execute(sa.text(
            "SELECT p.ID, p.USER, p.COMMAND, p.TIME, t.trx_started"
            " FROM information_schema.INNODB_TRX t"
            " JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id"
            " WHERE p.ID <> CONNECTION_ID() ORDER BY p.ID")).all()
        held = [f"connection {r.ID} ({r.USER}, {r.COMMAND} for {r.TIME} s, transaction open "
                f"since {r.trx_started:%H:%M:%S})" for r in rows]
    return ", ".join(held) or "a session that has ended"


# --- a revision run statement by statement ------------------------------------------------


class RowsBeforeDdl(MigrationError):
    """A DDL statement refused at run time: rows of the revision were written before it."""


def sent(cursor, statement: str, parameters) -> str:
    """The statement as the driver sends it, values in place (PyMySQL's `mogrify`; the
    statement with its values' repr for a driver without one)."""
    mogrify = getattr(cursor, "mogrify", None)
    if mogrify is None:
        return f"{statement} -- {parameters!r}" if parameters else statement
    return mogrify(statement, parameters)


def zeros(values):
    """Values of the same shape, each 0: the statement parses the same whatever they are
    (a binary value's `_binary'...'` is not what the parser is for)."""
    if isinstance(values, dict):
        return dict.fromkeys(values, 0)
    if isinstance(values, (list, tuple)):
        return (0,) * len(values)
    return values


class Journaled:
    """One run of a revision's upgrade (or downgrade) on MySQL/MariaDB, statement by
    statement as the driver sends them (SQLAlchemy's `do_execute` events on the migration
    engine's dialect, for this run alone): whatever runs them (an `op` operation,
    `op.get_bind().execute()`, an ORM session on the run's connection), each statement
    that writes (DDL or rows, as sqlglot's MySQL parser reads it) is counted; skipped when the
    journal says it committed in an earlier run; refused if it is DDL after rows this
    revision wrote (the DDL's implicit commit would keep them whatever happens next);
    retried on a lock wait timeout; and journaled once the server says it committed (outside
    a transaction after it: a DDL statement, with whatever was before). Reads run each time."""

    def __init__(self, connection, settings: Settings, label: str, revision: str,
                 between: str, upgrade: bool = True) -> None:
        self.connection = connection
        self.settings = settings
        self.label = label
        self.revision = revision
        self.between = between
        # A downgrade is retried on lock waits and says what committed, but is not journaled
        # (the journal resumes upgrades): it starts from nothing each time.
        self.upgrade = upgrade
        # [(sha256, text)] by index: what committed, in an earlier run or this one
        self.done = journal.committed(connection, revision) if upgrade else []
        self.index = 0
        self.pending: list[tuple[int, str, str, str]] = []  # run, not yet committed
        self.own = False  # the journal's own statements and the blockers' query pass
        # The run's session, whichever SQLAlchemy connection (a branch on 1.4) sends to it.
        self.driver_connection = connection.connection.dbapi_connection
        self.kinds: dict[str, str | None] = {}  # by the statement before its values go in

    @contextmanager
    def installed(self) -> Iterator[None]:
        dialect = self.connection.dialect
        listeners = [
            ("do_execute", lambda cursor, statement, parameters, context: self.execute(
                cursor, statement, parameters, lambda: cursor.execute(statement, parameters))),
            ("do_execute_no_params", lambda cursor, statement, context: self.execute(
                cursor, statement, None, lambda: cursor.execute(statement))),
            ("do_executemany", lambda cursor, statement, parameters, context: self.execute(
                cursor, statement, parameters, lambda: cursor.executemany(statement, parameters),
                many=True))]
        for name, listener in listeners:
            sa.event.listen(dialect, name, listener)
        try:
            yield
        finally:
            for name, listener in listeners:
                sa.event.remove(dialect, name, listener)

    def execute(self, cursor, statement: str, parameters, execute, many: bool = False) -> bool:
        """Run one statement the driver is about to send; True: it is handled. Statements of
        the engine's other sessions (the migration lock's) and the journal's own pass."""
        if self.own or cursor.connection is not self.driver_connection:
            return False
        values = parameters[0] if many and parameters else None if many else parameters
        if statement not in self.kinds:  # what a statement is, whatever its values
            self.kinds[statement] = kind(sent(cursor, statement, zeros(values)))
        what = self.kinds[statement]
        if what is None:
            return False  # a read, a SET, or what the parser cannot read: it runs each time
        index = self.index
        self.index += 1
        text = sent(cursor, statement, values)
        digest = hashlib.sha256(f"{text}\0{parameters!r}".encode() if many
                                else text.encode()).hexdigest()
        text = one_line(text)
        if index < len(self.done):
            if self.done[index][0] != digest:
                raise MigrationError(
                    f"{self.label}: statement {index + 1} ({text}) differs from the one that "
                    f"committed in an earlier run ({self.done[index][1]}); the database is "
                    f"between {self.between}: put that statement back as it was")
            return True  # committed in an earlier run: not run again
        written = what == "ddl" and next((t for _, _, t, k in self.pending if k == "dml"), None)
        if written:
            raise RowsBeforeDdl(
                f"{self.label}: statement {index + 1} ({text[:80]}) is DDL, which MySQL and "
                f"MariaDB commit together with the rows written before it ({written[:80]}); "
                "refused before it ran, those rows were rolled back: write rows after the "
                "DDL statements, or in a revision of their own")
        attempt = 0
        while True:
            try:
                execute()
                break
            except Exception as exc:  # the driver's own error, before SQLAlchemy wraps it
                if not is_lock_wait_timeout(exc) or attempt == self.settings.pg_lock_retries:
                    raise
                attempt += 1
                pause = backoff(attempt - 1)
                self.own = True
                try:
                    held = blockers(self.connection)
                finally:
                    self.own = False
                print(f"{self.label}: statement {index + 1} waited "
                      f"{whole_seconds(self.settings.ddl_lock_timeout)} s for a lock held by "
                      f"{held}; it changed nothing, retrying in "
                      f"{pause:g} s ({attempt} of {self.settings.pg_lock_retries})",
                      file=sys.stderr, flush=True)
                time.sleep(pause)  # the backoff itself, not a synchronisation
        self.pending.append((index, digest, text, what))
        if not self.driver_connection.server_status & IN_TRANSACTION:  # committed, with all before
            if self.upgrade:
                self.own = True
                try:
                    journal.record(self.connection, self.revision,
                                   [(i, d, t) for i, d, t, _ in self.pending])
                finally:
                    self.own = False
            self.done += [(d, t) for _, d, t, _ in self.pending]
            self.pending = []
        return True

    def failure(self, exc: BaseException) -> str:
        """The one line for a revision that failed after some of its statements committed."""
        what = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
        reason = one_line(str(what)) or type(what).__name__
        done = "; ".join(f"{n}) {t}" for n, (_, t) in enumerate(self.done, 1))
        then = ("fix the revision and run `db upgrade` again, which skips the statements "
                "that committed" if self.upgrade else
                "a downgrade run again would run them again: undo the rest by hand, or redo "
                "them and stay at the revision")
        return (f"{self.label} failed ({reason}); {len(self.done)} of its statements "
                f"committed and stay: {done}; the database is between {self.between} (its "
                f"version is not recorded): {then}")


def journaled(run, connection, settings: Settings, label: str, step):
    """`run` (a revision's upgrade or downgrade) through Journaled."""
    between = f"{journal.label(step.from_revisions)} and {journal.label(step.to_revisions)}"

    def run_journaled(**kwargs):
        statements = Journaled(connection, settings, label, step.revision.revision, between,
                               step.is_upgrade)
        try:
            with statements.installed():
                return run(**kwargs)
        except BaseException as exc:
            interrupt = interrupt_in(exc)
            if interrupt is not None:  # Ctrl-C: runner.Progress says what stays
                interrupt.committed_statements = [t for _, t in statements.done]
                raise interrupt from None
            if not statements.done or (isinstance(exc, MigrationError)
                                       and not isinstance(exc, RowsBeforeDdl)):
                raise
            raise MigrationError(statements.failure(exc)) from None
    return run_journaled


# --- no rows written before a DDL statement ----------------------------------------------

# Statements sqlglot leaves as a Command, by their first word: those that commit.
COMMITTING_COMMANDS = {"RENAME", "LOCK", "UNLOCK", "ANALYZE", "OPTIMIZE", "REPAIR", "GRANT",
                       "REVOKE", "INSTALL", "UNINSTALL"}
WRITING_COMMANDS = {"REPLACE", "LOAD"}


def kind(sql: str) -> str | None:
    """"ddl" (commits implicitly), "dml" (writes rows) or None, as sqlglot's MySQL parser
    reads the statement (None too for what it cannot parse)."""
    import sqlglot
    from sqlglot import exp

    try:
        tree = sqlglot.parse_one(sql, read="mysql")
    except sqlglot.errors.SqlglotError:
        return None
    if isinstance(tree, exp.Command):
        word = str(tree.this).upper()
        return "ddl" if word in COMMITTING_COMMANDS else "dml" if word in WRITING_COMMANDS \
            else None
    if isinstance(tree, (exp.Create, exp.Drop, exp.Alter, exp.TruncateTable)):
        return "ddl"
    if isinstance(tree, exp.DML):
        return "dml"
    return None


class Statements(io.StringIO):
    """Alembic's offline output buffer: each write is one statement."""

    def __init__(self) -> None:
        super().__init__()
        self.statements: list[str] = []

    def write(self, text: str) -> int:
        if text.strip():
            self.statements.append(text.strip())
        return len(text)


def rendered(upgrade, dialect) -> list[str] | None:
    """A revision's upgrade function as `--sql` renders it (Alembic's offline mode), or None when it
    cannot be rendered offline (it reads the database)."""
    from alembic import op as op_module
    from alembic.operations import Operations
    from alembic.runtime.migration import MigrationContext

    buffer = Statements()
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)  # Alembic's "Generating static SQL": nothing to the user
    try:
        context = MigrationContext.configure(dialect=dialect, opts={
            "as_sql": True, "literal_binds": True, "output_buffer": buffer})
    finally:
        logging.disable(previous)
    # Alembic's `op` is a module-level proxy of the Operations in use: this rendering's for
    # the call, then the online run's again (public names for both since Alembic 0.x).
    outer = getattr(op_module, "_proxy", None)
    operations = Operations(context)
    operations._install_proxy()
    try:
        upgrade()
    except Exception:  # noqa: BLE001 - any error: the revision needs the live database
        return None
    finally:
        if outer is not None:
            outer._install_proxy()
        else:
            operations._remove_proxy()
    return buffer.statements


def rows_before_ddl(statements: list[str]) -> tuple[str, str] | None:
    """The first statement that writes rows and a DDL statement after it, if there are."""
    written = None
    for sql in statements:
        what = kind(sql)
        if what == "dml" and written is None:
            written = sql
        elif what == "ddl" and written is not None:
            return one_line(written)[:80], one_line(sql)[:80]
    return None


def refuse_rows_before_ddl(steps, dialect) -> None:
    """Refuse, before anything runs, a revision that writes rows before a DDL statement."""
    for step in steps:
        statements = rendered(step.migration_fn, dialect)
        if statements is None:
            print(f"WARNING: {step.revision.revision} could not be rendered offline, so "
                  "whether it writes rows before a DDL statement was not checked",
                  file=sys.stderr)
            continue
        found = rows_before_ddl(statements)
        if found is not None:
            raise MigrationError(
                f"{step.revision.path}: refused before anything ran: it writes rows "
                f"({found[0]}) before a DDL statement ({found[1]}), whose implicit commit on "
                "MySQL/MariaDB would keep them even if the revision failed later; move the "
                "data change after the DDL or into a revision of its own")
