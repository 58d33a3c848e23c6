"""`db init --multidb`: one migration history for the app's default database and each of
its SQLALCHEMY_BINDS, as Flask-Migrate 2.7's multidb template has it (the same revision ids
in every database, each revision with an `upgrade_<bind>()` and `downgrade_<bind>()` per
database, the default database's bind named '').

This module owns what differs from a single database: which databases there are
(`bind_names`), the migration state of one of them (`BindState`), running the Alembic
command in progress on each in turn (`run_multidb_migrations`, called from the template's
env.py), and a rehearsal on all of them (`rehearse_run`). Each database's run is the
single-database run of runner.py, with every guarantee it gives: its own engine and
migration lock, its own snapshot (SQLite), checksums and alembic_version, its downgrade
questions. The databases run one after the other, each revision committing on its own, so a
failure in one says which databases committed what (`what_committed`).
"""
from __future__ import annotations

import logging
from contextlib import ExitStack, contextmanager
from pathlib import Path

import sqlalchemy as sa
from flask import current_app

from . import connections
from .errors import Interrupted, MigrationError, describe, interrupt_in
from .revisions import database_heads
from .state import MigrateState, current_state

DEFAULT = ""  # the default database's bind name in the revision files, as Flask-Migrate's
REHEARSAL = "safe_migrate.rehearsal"  # the key of config.attributes runner.py reads


def bind_names(app=None) -> list[str]:
    """The databases a multidb history migrates: '' (the default one), then each bind."""
    app = app or current_app
    return [DEFAULT, *(app.config.get("SQLALCHEMY_BINDS") or {})]


def bind_label(name: str) -> str:
    return "the default database" if name == DEFAULT else f"bind {name!r}"


def is_multidb(directory: str | Path) -> bool:
    """Whether the migrations folder was made by `db init --multidb` (its alembic.ini says
    so: see templates/flask-multidb)."""
    from configparser import ConfigParser

    ini = ConfigParser(interpolation=None)
    ini.read(Path(directory) / "alembic.ini")
    return ini.getboolean("safe_migrate", "multidb", fallback=False)


def refuse_without_binds(init: bool = False) -> None:
    if current_app.config.get("SQLALCHEMY_BINDS"):
        return
    if init:
        raise MigrationError("--multidb needs SQLALCHEMY_BINDS in the app's config; an app "
                             "with one database takes `db init`")
    raise MigrationError("the migrations folder is for several databases (`db init --multidb`) "
                         "but the app's config has no SQLALCHEMY_BINDS; nothing changed")


class BindState(MigrateState):
    """The migration state of one of the app's databases: its URL (and so its SQLite file,
    lock and engines) and the models' tables that live there."""

    def __init__(self, state: MigrateState, name: str) -> None:
        super().__init__(state.migrate, state.app)
        self.name = name
        self.bind = name or None  # Flask-SQLAlchemy's bind key (None: the default)
        self.downgrade_function = f"downgrade_{name}"

    @property
    def url(self) -> sa.engine.URL:
        if self.bind is None:
            return super().url
        uri = self.app.config["SQLALCHEMY_BINDS"][self.bind]
        return connections.database_url(uri["url"] if isinstance(uri, dict) else uri)

    @property
    def metadata(self) -> sa.MetaData:
        """The models' tables of this database, with the app's naming convention."""
        metadatas = getattr(self.db, "metadatas", None)
        if metadatas is not None:  # Flask-SQLAlchemy 3: one MetaData per bind, with that name
            return metadatas.get(self.bind) or sa.MetaData(
                naming_convention=self.db.metadata.naming_convention)
        metadata = sa.MetaData(naming_convention=self.db.metadata.naming_convention)
        for table in self.db.metadata.tables.values():
            if table.info.get("bind_key") == self.bind:
                table.to_metadata(metadata)
        return metadata

    @property
    def configure_args(self) -> dict:
        # autogenerate renders each database's operations where the template puts them
        return {**super().configure_args, "upgrade_token": f"{self.name}_upgrades",
                "downgrade_token": f"{self.name}_downgrades"}


class BindContext:
    """Alembic's `context` for one database's run: run_migrations() runs that database's
    functions of each revision, and the revision directives hook sees its operations."""

    def __init__(self, context, name: str, last: bool, empty: list[bool]) -> None:
        self._context = context
        self._name = name
        self._last = last
        self._empty = empty  # per database so far: whether autogenerate found no change

    def __getattr__(self, attribute):
        return getattr(self._context, attribute)

    def run_migrations(self) -> None:
        self._context.run_migrations(engine_name=self._name)

    def configure(self, **options) -> None:
        hook = options.get("process_revision_directives")
        if hook is not None:
            options["process_revision_directives"] = self.directives_of_this_database(hook)
        self._context.configure(**options)

    def directives_of_this_database(self, hook):
        """The single-database hook (autogenerate.revision_directives_hook) on this
        database's operations; the revision is left out only when no database changed."""
        from alembic.operations import ops

        def process_revision_directives(context, revision, directives):
            script = directives[0]
            view = [ops.MigrationScript(script.rev_id, script.upgrade_ops_list[-1],
                                        script.downgrade_ops_list[-1])]
            with quiet_no_changes():
                hook(context, revision, view)
            self._empty.append(not view)
            if self._last and all(self._empty):
                directives[:] = []
                logging.getLogger("alembic.env").info("No changes in schema detected.")

        return process_revision_directives


class NoChangesFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "No changes in schema detected."


@contextmanager
def quiet_no_changes():
    """One database without changes is not the revision's "No changes": that line comes
    once, when no database changed."""
    log, quiet = logging.getLogger("alembic.env"), NoChangesFilter()
    log.addFilter(quiet)
    try:
        yield
    finally:
        log.removeFilter(quiet)


def run_multidb_migrations() -> None:
    """Run the Alembic command in progress on each database in turn (call from env.py)."""
    from alembic import context

    from .runner import LOCKED, QuietStart, run_offline, run_online

    for name in ("alembic.runtime.migration", "alembic.runtime.plugins"):
        log = logging.getLogger(name)
        if not any(isinstance(f, QuietStart) for f in log.filters):
            log.addFilter(QuietStart())
    refuse_without_binds()
    state = current_state()
    names = bind_names(state.app)
    command = context.config.attributes.get("safe_migrate.command")
    places = context.config.attributes.get(REHEARSAL)  # {name: rehearsal.Place}, or None
    offline = context.is_offline_mode()
    empty: list[bool] = []
    before: dict[str, str] = {}
    # A rehearsal changes nothing to ask about first (and its transactions hold locks)
    answered = (ask_first(context, state, names)
                if command == "downgrade" and not offline and places is None else set())
    log = logging.getLogger("alembic.env")
    for n, name in enumerate(names):
        bind = BindState(state, name)
        bind_context = BindContext(context, name, n == len(names) - 1, empty)
        log.info("Migrating database %s", name or "<default>")
        if command in LOCKED and not offline and places is None:
            before[name] = heads_label(bind)
        try:
            if offline:  # each database's script, one after the other, each named
                print(f"-- {bind_label(name)}", flush=True)
                run_offline(bind_context, bind)
                continue
            context.config.attributes[REHEARSAL] = places[name] if places else None
            with yes_said(context.config, name in answered):
                run_online(bind_context, bind)
        except BaseException as exc:  # noqa: BLE001  (Ctrl-C too: it says what committed)
            if places is not None:
                raise failure(exc, f"{bind_label(name)}: {describe(exc)}. A rehearsal: no "
                                   "database was changed") from None
            if command not in LOCKED or offline:
                raise failure(exc, f"{bind_label(name)}: {describe(exc)}") from None
            after = {done: heads_label(BindState(state, done)) for done in names[:n + 1]}
            raise failure(exc, f"{bind_label(name)}: {describe(exc)}. "
                               + what_committed(names, before, after)) from None
        finally:
            context.config.attributes[REHEARSAL] = places


def ask_first(context, state: MigrateState, names: list[str]) -> set[str]:
    """A downgrade's questions (to base, or dropping tables that hold rows: guards.py), every
    database's before any database changes; the databases whose question was answered yes.
    (Each run still compares the rows after each revision, as for a single database.)"""
    from . import guards
    from .options import run_options
    from .runner import destination_label

    if run_options(context.get_x_argument()).yes:
        return set()
    answered = set()
    for name in names:
        bind = BindState(state, name)
        if bind.path is not None and not bind.path.exists():
            continue  # the run says so
        engine = bind.engine
        try:
            with engine.connect() as conn:
                heads = database_heads(conn)
                if not heads:
                    continue  # nothing to downgrade: the run says so
                context.configure(connection=conn)
                steps = list(context.get_context().opts["fn"](heads, context.get_context()))
                if steps and guards.confirm_downgrade(
                        guards.rows_to_be_dropped(conn, steps, bind.downgrade_function),
                        destination_label(steps), False):
                    answered.add(name)
        except MigrationError as exc:
            raise MigrationError(f"{bind_label(name)}: {exc} (no database changed)") from None
        finally:
            engine.dispose()
    return answered


@contextmanager
def yes_said(config, yes: bool):
    """`-x yes` for one database's run: its question was answered by ask_first."""
    if not yes:
        yield
        return
    saved = config.cmd_opts.x
    config.cmd_opts.x = [*(saved or []), "yes"]
    try:
        yield
    finally:
        config.cmd_opts.x = saved


def failure(exc: BaseException, message: str) -> BaseException:
    """The error to show for a database's failure: a Ctrl-C stays one (exit 130)."""
    if interrupt_in(exc) is not None:
        return Interrupted(message)
    return MigrationError(message)


def heads_label(bind: BindState) -> str:
    """The revisions the database is at now, read on an engine of our own ("base" for none,
    and for a SQLite file that does not exist)."""
    from .runner import revision_label

    if bind.path is not None and not bind.path.exists():
        return "base"
    engine = bind.engine
    try:
        with engine.connect() as conn:
            return revision_label(database_heads(conn))
    except sa.exc.DBAPIError as exc:
        return f"unknown ({describe(exc)})"
    finally:
        engine.dispose()


def what_committed(names: list[str], before: dict[str, str], after: dict[str, str]) -> str:
    """Each database's state after a failure: which committed (from -> to), which are as
    they were, which the run never reached."""
    parts = []
    for name in names:
        label = bind_label(name)
        if name not in after:
            parts.append(f"{label}: not run")
        elif after[name] == before[name]:
            parts.append(f"{label}: unchanged at {after[name]}")
        else:
            parts.append(f"{label}: committed {before[name]} -> {after[name]}")
    return "Databases now: " + "; ".join(parts)


def check(script_heads: list[str]) -> None:
    """`db check` of a multidb history: each database against its models' tables and the
    migrations' head; exit 1 with each difference on a line, named for its database."""
    import sys

    from .comparison import check_lines
    from .hooks import check_options
    from .runner import not_our_bookkeeping

    refuse_without_binds()
    state = current_state()
    options = check_options(state, not_our_bookkeeping)
    problems = []
    for name in bind_names(state.app):
        bind = BindState(state, name)
        engine = bind.engine
        try:
            with engine.connect() as conn:
                lines = check_lines(conn, bind.metadata, options, script_heads)
        finally:
            engine.dispose()
        problems += [f"{bind_label(name)}: {line}" for line in lines]
    if problems:
        print("\n".join(problems))
        sys.exit(1)
    print("The models, the migrations' head and each database agree.")


def repair(script) -> None:
    """`db repair` of a multidb history: each database records the checksums of the
    revisions applied to it anew, under its own migration lock."""
    from .checksums import ensure_checksum_table, forget_checksums, remember_checksums

    refuse_without_binds()
    state = current_state()
    for name in bind_names(state.app):
        bind = BindState(state, name)
        engine = bind.engine
        try:
            with bind.lock(bind.wait_budget()), engine.begin() as conn:
                applied = list(script.iterate_revisions(database_heads(conn), "base"))
                ensure_checksum_table(conn)
                forget_checksums(conn)
                remember_checksums(conn, applied)
        finally:
            engine.dispose()
        print(f"{bind_label(name).capitalize()}: recorded the checksums of {len(applied)} "
              "applied revision(s)")


def rehearse_run(kind: str, directory, revision: str, x_arg, round_trip: bool) -> None:
    """`db upgrade|downgrade --rehearse` of a multidb history: each SQLite database on its
    copy, each PostgreSQL one in its own never-committing transaction (rehearsal.py), all
    thrown away at the end. With round_trip, back to where the databases were and `kind`
    again, every row of every database compared (they must start at the same revisions)."""
    from alembic import command

    from .commands import config
    from .rehearsal import rehearsal

    refuse_without_binds()
    state = current_state()
    names = bind_names(state.app)
    x_arg = [*(x_arg or []), "backup=off"]
    with ExitStack() as stack:
        places, remembers = {}, {}
        for name in names:
            places[name], remembers[name] = stack.enter_context(
                rehearsal(BindState(state, name)))
        starts = {heads_label(BindState(state, name)) for name in names}
        if round_trip and len(starts) > 1:
            raise MigrationError("--round-trip needs every database at the same revisions; they "
                                 f"are at {', '.join(sorted(starts))}: `db upgrade` first")
        forward = getattr(command, kind)
        forward(config(directory, x_arg, command=kind, rehearsal=places), revision)
        if not round_trip:
            return
        [start] = starts
        rows_lost = {name: remember() for name, remember in remembers.items()}
        back = command.downgrade if kind == "upgrade" else command.upgrade
        back(config(directory, [*x_arg, "yes"], command=kind, rehearsal=places), start)
        forward(config(directory, x_arg, command=kind, rehearsal=places), revision)
        lost = [f"{bind_label(name)}: {table} ({rows} rows)" for name, lost in rows_lost.items()
                for table, rows in lost().items()]
        if lost:
            raise MigrationError("the round trip lost rows: " + ", ".join(lost))
        print(f"Round trip: back to {start} and {kind} again; every row of every database is "
              f"as the first {kind} left it")


__all__ = ["BindState", "bind_names", "is_multidb", "rehearse_run",
           "run_multidb_migrations"]
