"""The `db` commands, one thin function each, as Flask-Migrate 4 has them (`list-templates`,
`init --template`, `stamp --purge`, `-x` on every command), plus `check`, `repair` and
`restore`. Both CLIs (cli.py) call these; what makes a run safe happens where Alembic runs
it (runner.py), so these only pass their options on. Every command parses its -x first.

Alembic is imported inside the functions: a command that does not need it does not pay
for it at start-up.
"""
from __future__ import annotations

import sys
from contextlib import closing
from pathlib import Path

import sqlalchemy as sa

from .adoption import naming_problem, write_env
from .checksums import (
    applied_dates,
    ensure_checksum_table,
    forget_checksums,
    recorded_checksums,
    remember_checksums,
)
from .connections import refuse_unsupported
from .errors import Interrupted, MigrationError
from .multidb import is_multidb
from .mysql_strings import string_problem
from .options import run_options
from .revisions import database_heads, revision_index
from .snapshots import (
    check_snapshot,
    identity,
    read_only,
    restore_into,
    rotate_snapshots,
    rows_only_in,
    take_snapshot,
)
from .state import TEMPLATES, current_state


def config(directory=None, x_arg=None, opts=None, command=None, rehearsal=None):
    """Alembic's Config for a command; what env.py's runner needs to know of this run
    (which command, where a rehearsal runs) goes in its `attributes`."""
    config = current_state().migrate.get_config(directory, x_arg, opts, command)
    config.attributes["safe_migrate.rehearsal"] = rehearsal
    return config


def cached_index(directory=None) -> dict | None:
    """The cached facts about the revision files (revisions.py), or None; None too for an
    app with `@migrate.configure` callbacks, which may change what Alembic reads."""
    state = current_state()
    if state.migrate.configure_callbacks:
        return None
    directory = directory or state.directory
    return revision_index(Path(directory), lambda: config(directory))


def script_directory(directory=None, x_arg=None):
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(config(directory, x_arg))


def list_templates(x_arg=None):
    """List available templates."""
    run_options(x_arg, "list-templates")
    print("Available templates:\n")
    for name in template_names():
        with open(TEMPLATES / name / "README") as readme:
            print(f"{name} - {readme.readline().strip()}")


def template_names() -> list[str]:
    """The templates `db init --template` takes: the folders of safe_migrate/templates."""
    return sorted(path.name for path in TEMPLATES.iterdir() if (path / "README").is_file())


def init(directory=None, multidb=False, template=None, package=False, x_arg=None):
    """Creates a new migration repository"""
    from alembic import command

    run_options(x_arg, "init")
    state = current_state()
    directory = directory or state.directory
    if template is None:
        template = "flask-multidb" if multidb else "flask"
    elif multidb and template != "flask-multidb":
        raise MigrationError(f"--multidb is --template flask-multidb, not {template}: give one "
                             "(nothing was written)")
    if template not in template_names():
        raise MigrationError(f"no template {template!r}; the templates are "
                             f"{', '.join(template_names())} (nothing was written)")
    if template == "flask-multidb":
        from .multidb import refuse_without_binds

        refuse_without_binds(init=True)
    problem = naming_problem(state.metadata)  # its alembic.ini says the history has names
    if problem:
        raise MigrationError(f"{problem}; then run `db init` again (nothing was written)")
    command.init(config(directory, x_arg), directory, template, package=package)


def env(directory=None, force=False, x_arg=None):
    """Write safe_migrate's migrations/env.py into an existing migrations folder (one made by
    Flask-Migrate); --force replaces one that differs, keeping it as env.py.bak"""
    run_options(x_arg, "env")
    print(write_env(Path(directory or current_state().directory), force))


def revision(directory=None, message=None, autogenerate=False, sql=False, head="head",
             splice=False, branch_label=None, version_path=None, rev_id=None, x_arg=None,
             plain=False):
    """Create a new revision file (--autogenerate: from the models, asking about renames;
    on PostgreSQL in the zero-downtime pattern unless --plain)"""
    run_options(x_arg, "revision")  # an unknown or malformed -x: refused before anything runs
    from alembic import command
    from alembic.util import CommandError

    opts = ["autogenerate"] if autogenerate else None
    alembic_config = config(directory, x_arg, opts, "revision")
    alembic_config.attributes["safe_migrate.plain"] = plain  # read by zero_downtime's caller
    strings = string_problem(current_state().url, current_state().metadata) if autogenerate \
        else None
    if strings:  # MySQL could not run what it would write (mysql_strings.py)
        raise MigrationError(f"{strings}; nothing was written")
    naming = naming_problem(current_state().metadata) if autogenerate else None
    if naming:  # what it writes may leave out what Alembic cannot see (see adoption.py)
        print(f"WARNING: {naming}", file=sys.stderr)
    try:
        command.revision(alembic_config, message,
                         autogenerate=autogenerate, sql=sql, head=head, splice=splice,
                         branch_label=branch_label, version_path=version_path, rev_id=rev_id)
    except CommandError as exc:
        if "not up to date" in str(exc):
            raise MigrationError(f"{exc} Run `db upgrade` first.") from None
        raise


def migrate(directory=None, message=None, sql=False, head="head", splice=False,
            branch_label=None, version_path=None, rev_id=None, x_arg=None, plain=False):
    """Alias for 'revision --autogenerate'"""
    run_options(x_arg, "migrate")
    revision(directory, message, True, sql, head, splice, branch_label, version_path, rev_id,
             x_arg, plain)


def edit(directory=None, revision="current", x_arg=None):
    """Edit current revision."""
    from alembic import command

    run_options(x_arg, "edit")
    command.edit(config(directory, x_arg), revision)


def merge(directory=None, revisions="", message=None, branch_label=None, rev_id=None,
          x_arg=None):
    """Merge two revisions together.  Creates a new migration file"""
    from alembic import command

    run_options(x_arg, "merge")
    command.merge(config(directory, x_arg), revisions, message=message, branch_label=branch_label,
                  rev_id=rev_id)


def upgrade(directory=None, revision="head", sql=False, tag=None, x_arg=None, rehearse=False,
            round_trip=False):
    """Upgrade to a later version (a SQLite file is snapshotted first; -x backup=off skips;
    --rehearse runs it on a copy and reports)"""
    run_options(x_arg, "upgrade")
    if not sql:
        refuse_unsupported(current_state().url, "upgrade")
    if rehearse or round_trip:
        return rehearse_run("upgrade", directory, revision, x_arg, round_trip)
    at_head = not sql and revision in ("head", "heads") and nothing_to_upgrade(directory)
    if at_head:
        print(f"Already at head ({', '.join(at_head)}).")
        return
    from alembic import command

    command.upgrade(config(directory, x_arg, command="upgrade"), revision, sql=sql, tag=tag)


def rehearse_run(kind: str, directory, revision: str, x_arg, round_trip: bool) -> None:
    """Run `kind` (upgrade or downgrade) to `revision` and throw the result away (see
    rehearsal.py); with round_trip, go back and run it again, and compare every row."""
    from alembic import command

    from . import multidb
    from .rehearsal import rehearsal
    from .runner import revision_label

    state = current_state()
    if multidb.is_multidb(directory or state.directory):
        return multidb.rehearse_run(kind, directory, revision, x_arg, round_trip)
    if nothing_pending(kind, directory, revision):
        print("Nothing pending: no rehearsal.")
        return
    x_arg = [*(x_arg or []), "backup=off"]
    with rehearsal(state) as (where, remember):
        with state.engine.connect() as conn:
            start = revision_label(database_heads(conn))
        forward = getattr(command, kind)
        back = command.downgrade if kind == "upgrade" else command.upgrade
        forward(config(directory, x_arg, command=kind, rehearsal=where), revision)
        if round_trip:
            rows_lost = remember()
            back(config(directory, [*x_arg, "yes"], command=kind, rehearsal=where), start)
            forward(config(directory, x_arg, command=kind, rehearsal=where), revision)
            lost = rows_lost()
            if lost:
                raise MigrationError("the round trip lost rows: " + ", ".join(
                    f"{table} ({rows} rows)" for table, rows in lost.items()))
            print(f"Round trip: back to {start} and {kind} again; every row is as the first "
                  f"{kind} left it")


def nothing_pending(kind: str, directory, revision: str) -> bool:
    """True when the database is already at `revision` (a rehearsal of nothing copies
    nothing); a downgrade at base is refused here as `db downgrade` refuses it. Anything
    Alembic must explain (an unknown or relative revision, several heads) is left to the run."""
    from alembic.util import CommandError

    from .checksums import verify_checksums

    state = current_state()
    if state.path is not None and not state.path.exists():
        return False  # the rehearsal says there is no database
    script = script_directory(directory)
    with state.engine.connect() as conn:
        heads = database_heads(conn)
        if kind == "downgrade" and not heads:
            raise MigrationError("nothing to downgrade: the database is at base")
        try:
            target = {r.revision for r in script.get_revisions(revision) if r is not None}
        except CommandError:
            return False
        if set(heads) != target:
            return False
        verify_checksums(script, conn)  # an edited applied revision is refused, as by a run
    return True


def nothing_to_upgrade(directory) -> list[str] | None:
    """The heads, when the database is at the history's heads and every applied revision's
    file is as it was applied: what a deploy's no-op `db upgrade` needs to know, without
    Alembic. None for anything else, which takes Alembic's path, which says what is wrong."""
    state = current_state()
    directory = Path(directory or state.directory)
    index = cached_index(directory)
    if index is None or (state.path is not None and not state.path.exists()) \
            or is_multidb(directory):  # each database is Alembic's to read (multidb.py)
        return None
    with state.engine.connect() as conn:
        heads = database_heads(conn)
        recorded = recorded_checksums(conn)
    if not heads or sorted(heads) != index["heads"]:
        return None
    files, hashes = index["files"], index["hashes"]  # hashed as the cache was checked
    unchanged = all(revision in files and hashes.get(files[revision]) == checksum
                    for revision, checksum in recorded.items())
    return index["heads"] if unchanged else None


def downgrade(directory=None, revision="-1", sql=False, tag=None, x_arg=None, rehearse=False,
              round_trip=False):
    """Revert to a previous version (a SQLite file is snapshotted first; -x backup=off
    skips; to base, or dropping tables that hold rows, asks first: -x yes answers;
    --rehearse runs it on a copy and reports)"""
    run_options(x_arg, "downgrade")
    if not sql:
        refuse_unsupported(current_state().url, "downgrade")
    if rehearse or round_trip:
        return rehearse_run("downgrade", directory, revision, x_arg, round_trip)
    from alembic import command

    if sql and revision == "-1":
        revision = "head:-1"
    command.downgrade(config(directory, x_arg, command="downgrade"), revision, sql=sql, tag=tag)


def show(directory=None, revision="head", x_arg=None):
    """Show the revision denoted by the given symbol."""
    from alembic import command

    run_options(x_arg, "show")
    command.show(config(directory, x_arg), revision)


def history(directory=None, rev_range=None, verbose=False, indicate_current=False,
            applied=False, x_arg=None):
    """List changeset scripts in chronological order (--applied: with the dates they were
    applied to this database)"""
    run_options(x_arg, "history")
    if not applied:
        plain = not (rev_range or verbose or indicate_current)
        index = cached_index(directory) if plain else None
        if index is not None:
            for line in index["history_lines"]:
                print(line)
            return
        from alembic import command

        return command.history(config(directory, x_arg), rev_range, verbose=verbose,
                               indicate_current=indicate_current)
    with current_state().engine.connect() as conn:
        dates = applied_dates(conn)
    for rev in script_directory(directory).walk_revisions():
        when, took = dates.get(rev.revision, (None, None))
        when = f"applied {when:%Y-%m-%d %H:%M:%S}" if when else "not applied"
        if took is not None:
            when += f" in {took:.2f} s"
        print(f"{rev.revision}  {when:<38}  {rev.doc}")


def heads(directory=None, verbose=False, resolve_dependencies=False, x_arg=None):
    """Show current available heads in the script directory"""
    run_options(x_arg, "heads")
    index = None if verbose or resolve_dependencies else cached_index(directory)
    if index is not None:
        for line in index["heads_lines"]:
            print(line)
        return
    from alembic import command

    command.heads(config(directory, x_arg), verbose=verbose, resolve_dependencies=resolve_dependencies)


def branches(directory=None, verbose=False, x_arg=None):
    """Show current branch points"""
    from alembic import command

    run_options(x_arg, "branches")
    command.branches(config(directory, x_arg), verbose=verbose)


def current(directory=None, verbose=False, x_arg=None):
    """Display the current revision for each database."""
    run_options(x_arg, "current")
    state = current_state()
    multidb = is_multidb(directory or state.directory)  # each database: Alembic's reading
    index = None if verbose or multidb else cached_index(directory)
    if index is None:
        script_directory(directory)  # Alembic's own line for a folder it cannot read
    if not multidb:
        with state.engine.connect() as conn:
            versioned = sa.inspect(conn).has_table("alembic_version")
            heads = database_heads(conn)
        if not versioned:
            print("No alembic_version table: this database is not under migrations "
                  "(see db stamp).")
            return
        if not heads:
            print("At base: no revision is applied.")
            return
        if index is not None and all(head in index["lines"] for head in heads):
            # What Alembic's `current` prints, without loading Alembic or every revision file.
            for head in heads:
                print(index["lines"][head])
            return
    # verbose, version_locations, or a revision that Alembic must explain
    from alembic import command

    command.current(config(directory, x_arg, command="current"), verbose=verbose)


def stamp(directory=None, revision="head", sql=False, tag=None, purge=False, x_arg=None):
    """'stamp' the revision table with the given revision; don't run any migrations
    (this is how an existing database is adopted; --purge empties the table first)"""
    run_options(x_arg, "stamp")
    if not sql:
        refuse_unsupported(current_state().url, "stamp")
    from alembic import command

    if purge:
        # Alembic empties the version table in a transaction of its own, before the stamp's
        # (transaction_per_migration): a destination it cannot find is refused first.
        script_directory(directory, x_arg).get_revisions(revision)
    command.stamp(config(directory, x_arg, command="stamp"), revision, sql=sql, tag=tag,
                  purge=purge)


def check(directory=None, x_arg=None):
    """Exit 0 if the models match the migrations' head and the database is at head; else
    exit 1 and list each difference on a line (also when the models' constraints have no
    names, which Alembic cannot compare)"""
    from .comparison import check_lines
    from .hooks import check_options
    from .runner import not_our_bookkeeping

    run_options(x_arg, "check")
    state = current_state()
    index = cached_index(directory)
    script_heads = index["heads"] if index else script_directory(directory).get_heads()
    if is_multidb(directory or state.directory):  # each database: multidb.py
        from .multidb import check

        return check(script_heads)
    with state.engine.connect() as conn:
        problems = check_lines(conn, state.metadata, check_options(state, not_our_bookkeeping),
                               script_heads)
    if problems:
        print("\n".join(problems))
        sys.exit(1)
    print("The models, the migrations' head and the database agree.")


def lint(directory=None, revisions=(), since=None, format="text", x_arg=None):
    """Name the operations of the revisions (all, those named, or those after --since) that
    lock or break a live database, with the safer pattern; exit 1 on a finding (docs/lint.md)"""
    from .lint import lint as lint_revisions

    run_options(x_arg, "lint")
    code = lint_revisions(config(directory, x_arg, command="lint"), current_state(), revisions,
                          since, format)
    if code:
        sys.exit(code)


def repair(directory=None, x_arg=None):
    """Record the checksums of the applied revisions' files anew, after a deliberate edit."""
    run_options(x_arg, "repair")
    state = current_state()
    script = script_directory(directory, x_arg)
    if is_multidb(directory or state.directory):  # each database: multidb.py
        from .multidb import repair

        return repair(script)
    with state.lock(state.wait_budget()), state.engine.begin() as conn:
        applied = list(script.iterate_revisions(database_heads(conn), "base"))
        ensure_checksum_table(conn)
        forget_checksums(conn)
        remember_checksums(conn, applied)
    print(f"Recorded the checksums of {len(applied)} applied revision(s)")


def restore(snapshot, x_arg=None, directory=None):
    """Put a snapshot from backups/ back in place of the SQLite database, also of a damaged
    or a missing one (it asks first if the database has rows the snapshot lacks)"""
    import sqlite3

    from .autogenerate import insist_on_yes
    from .runner import revision_label
    from .snapshots import applied_revisions, is_damage, is_named_for, replace_database
    from .sqlite import is_read_only

    options = run_options(x_arg, "restore")
    state = current_state()
    path, snapshot = state.path, Path(snapshot)
    if path is None:
        raise MigrationError("restore works on SQLite files only; use your server's backups")
    if is_read_only(state.url):
        raise MigrationError(f"the database URL opens {path} read-only; nothing changed")
    if not snapshot.is_file():
        raise MigrationError(f"no snapshot at {snapshot}")
    if snapshot.resolve() == path.resolve():
        raise MigrationError(f"{snapshot} is the database itself; name a snapshot from backups/")
    if not path.parent.is_dir():
        raise MigrationError(f"no folder {path.parent} for the database (check DATABASE_URL); "
                             "nothing changed")
    revisions, origin = check_snapshot(snapshot)
    known = revision_index(Path(directory or state.directory))
    for revision in revisions:
        if known is not None and revision not in known["lines"]:
            raise MigrationError(f"{snapshot} is at revision {revision}, which migrations/ does "
                                 "not know: not a snapshot of this project; nothing changed")
    budget, settings = state.wait_budget(), state.settings
    with state.lock(budget):
        # The live file is read to compare it with the snapshot, and copied for an undo; one
        # that SQLite cannot read (or none) is what restore is for.
        unreadable = None if path.exists() else f"no database at {path} (check DATABASE_URL)"
        if unreadable is None:
            try:
                with closing(read_only(path, budget.left)) as conn:
                    ours, heads = identity(conn), applied_revisions(conn)
                if (ours is None or origin != ours) and not options.foreign:
                    raise MigrationError(
                        f"{snapshot} was not taken from {path} (it has no migration_database "
                        "identity, or another one); nothing changed. To restore it anyway, add "
                        "-x foreign")
                lost = rows_only_in(path, snapshot, budget.left)
                if lost and not options.yes:
                    what = (f"{path.name} has rows that {snapshot.name} lacks, which a restore "
                            "loses: " + ", ".join(f"{table} ({rows} rows)"
                                                  for table, rows in lost.items()))
                    insist_on_yes(what, "Restore?", "restore", "nothing changed")
                undo = take_snapshot(path, revision_label(heads), "restore", budget.left,
                                     settings.snapshots_kept, settings.snapshots_max_bytes)
                try:
                    restore_into(snapshot, path, budget.left)
                except Exception:
                    undo.unlink()  # the backup API's one transaction failed: nothing changed
                    raise
                except KeyboardInterrupt:  # the copy may have committed before Python saw it
                    raise Interrupted(
                        f"interrupted during the restore: {path} holds the snapshot or is as "
                        f"it was; the copy of it taken before is kept at {undo}") from None
            except sqlite3.DatabaseError as exc:
                if not is_damage(exc):
                    raise
                unreadable = f"{path} cannot be read ({exc})"
        if unreadable is not None:
            # No identity to compare with: the snapshot's own name and identity must say
            # which database it was taken from, and the user says yes.
            if (origin is None or not is_named_for(snapshot, path.resolve())) \
                    and not options.foreign:
                raise MigrationError(
                    f"{unreadable}, and {snapshot} is not named as a snapshot of {path.name} "
                    "or has no migration_database identity; nothing changed. To restore it "
                    "anyway, add -x foreign")
            if not options.yes:
                insist_on_yes(f"{unreadable}; a restore puts {snapshot.name} in its place",
                              "Restore?", "restore", "nothing changed")
            kept = replace_database(snapshot, path.resolve(), budget.left)
            if kept is not None:
                print(f"Kept the unreadable {path.name} as {kept}")
        rotate_snapshots(path, settings.snapshots_kept, settings.snapshots_max_bytes)
    print(f"Restored {path} from {snapshot}")
