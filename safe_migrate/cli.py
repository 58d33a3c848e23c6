"""The `db` commands on both CLIs: Flask-Script's `MigrateCommand` and `flask db`.

Each command is described once (its function in commands.py and its options below) and
built for each CLI from that description, with its errors reported as one line. The `db`
group's own -d and -x (Flask-Migrate 4's `db -d DIR -x KEY CMD`) are merged into the
command's arguments here, so commands.py sees one directory and one list of -x.
"""
from __future__ import annotations

import atexit
import gc
import sys
from contextlib import contextmanager
from pathlib import Path

import click
from flask.cli import with_appcontext

from . import commands
from .compat import flask_script
from .errors import reported
from .options import x_help
from .usage import DbCommandClick, DbGroup, DbManager, help_texts


class Opt:
    """One option or argument of a command, for argparse (Flask-Script) and click. (A plain
    class: a dataclass costs more at start-up than every command's parser.)"""

    def __init__(self, flags: tuple, help: str = "", default=None, flag: bool = False,
                 multiple: bool = False, nargs: str | None = None,
                 metavar: str | None = None) -> None:
        self.flags = flags
        self.help = help
        self.default = default
        self.flag = flag            # --sql: true when given
        self.multiple = multiple    # -x a -x b
        self.nargs = nargs          # arguments: "?" (optional), "+" / "*" (one / any or more)
        self.metavar = metavar      # the value's name in help: -x KEY[=VALUE]
        self.dest = max(flags, key=len).lstrip("-").replace("-", "_")

    @property
    def positional(self) -> bool:
        return not self.flags[0].startswith("-")


def opt(*flags, **kwargs) -> Opt:
    return Opt(flags, **kwargs)


DIRECTORY = opt("-d", "--directory", help="Migration script directory (default is 'migrations')")


def x_arg(command: str) -> Opt:
    """-x, with the keys this command takes (options.py) as its help."""
    return opt("-x", "--x-arg", multiple=True, metavar="KEY[=VALUE]", help=x_help(command))


SQL = opt("--sql", flag=True, help="Don't emit SQL to database - dump to standard output instead")
TAG = opt("--tag", help="Arbitrary 'tag' name - can be used by custom env.py scripts")
MESSAGE = opt("-m", "--message", help="Revision message")
VERBOSE = opt("-v", "--verbose", flag=True, help="Use more verbose output")
REHEARSE = [
    opt("--rehearse", flag=True, help="run it on a copy of the SQLite file and report each "
                                      "revision's time and rows; the database is not changed"),
    opt("--round-trip", flag=True, help="rehearse, then go back and run it again, checking "
                                        "that every table keeps its rows"),
]
PLAIN = opt("--plain", flag=True, help="on PostgreSQL, write plain operations, not the "
                                       "zero-downtime pattern (concurrent indexes, NOT VALID "
                                       "constraints, batched backfills)")
NEW_REVISION = [
    opt("--head", default="head", help="Specify head revision or <branchname>@head to base new "
                                       "revision on"),
    opt("--splice", flag=True, help="Allow a non-head revision as the 'head' to splice onto"),
    opt("--branch-label", help="Specify a branch label to apply to the new revision"),
    opt("--version-path", help="Specify specific path from config for version file"),
    opt("--rev-id", help="Specify a hardcoded revision id instead of generating one"),
]

COMMANDS = {
    "list-templates": (commands.list_templates, []),
    "init": (commands.init, [DIRECTORY, opt("--multidb", flag=True, help="Multiple databases "
                                                                           "migration (SQLALCHEMY_BINDS)"),
                             opt("-t", "--template", help="Repository template to use (default "
                                                          "is 'flask'; see db list-templates)"),
                             opt("--package", flag=True, help="Write empty __init__.py files to "
                                                              "the environment and version "
                                                              "locations")]),
    "env": (commands.env, [DIRECTORY, opt("--force", flag=True, help=(
        "replace an env.py that differs, keeping it as env.py.bak"))]),
    "revision": (commands.revision, [DIRECTORY, MESSAGE, opt("--autogenerate", flag=True, help=(
        "Populate revision script with candidate migration operations, based on comparison of "
        "database to model")), SQL, *NEW_REVISION, PLAIN]),
    "migrate": (commands.migrate, [DIRECTORY, MESSAGE, SQL, *NEW_REVISION, PLAIN]),
    "edit": (commands.edit, [DIRECTORY, opt("revision", nargs="?", default="head",
                                            help="revision identifier")]),
    "merge": (commands.merge, [DIRECTORY, MESSAGE, opt("--branch-label", help=(
        "Specify a branch label to apply to the new revision")), opt("--rev-id", help=(
            "Specify a hardcoded revision id instead of generating one")),
        opt("revisions", nargs="+", help="one or more revisions, or 'heads' for all heads")]),
    "upgrade": (commands.upgrade, [DIRECTORY, SQL, TAG, *REHEARSE, opt(
        "revision", nargs="?", default="head", help="revision identifier")]),
    "downgrade": (commands.downgrade, [DIRECTORY, SQL, TAG, *REHEARSE, opt(
        "revision", nargs="?", default="-1", help="revision identifier")]),
    "show": (commands.show, [DIRECTORY, opt("revision", nargs="?", default="head",
                                            help="revision identifier")]),
    "history": (commands.history, [DIRECTORY, opt("-r", "--rev-range", help=(
        "Specify a revision range; format is [start]:[end]")), VERBOSE,
        opt("-i", "--indicate-current", flag=True, help="Indicate current version (Alembic "
                                                         "0.9.9 or greater is required)"),
        opt("--applied", flag=True, help="show when each revision was applied to this database")]),
    "heads": (commands.heads, [DIRECTORY, VERBOSE, opt("--resolve-dependencies", flag=True, help=(
        "Treat dependency versions as down revisions"))]),
    "branches": (commands.branches, [DIRECTORY, VERBOSE]),
    "current": (commands.current, [DIRECTORY, VERBOSE]),
    "stamp": (commands.stamp, [DIRECTORY, SQL, TAG, opt("--purge", flag=True, help=(
        "Delete every row of the version table before stamping (one with a revision this "
        "history lacks)")), opt("revision", nargs="?", default="head",
                                help="revision identifier")]),
    "check": (commands.check, [DIRECTORY]),
    "lint": (commands.lint, [DIRECTORY, opt("--since", help="lint the revisions after this "
                                                           "one"),
                             opt("--format", default="text", help="text, or github (annotations)"),
                             opt("revisions", nargs="*", help="revisions to lint (default: all)")]),
    "repair": (commands.repair, [DIRECTORY]),
    "restore": (commands.restore, [DIRECTORY, opt("snapshot", help="a snapshot file, from "
                                                                   "backups/ beside the "
                                                                   "database")]),
}
# -x on every command, before its positional arguments (help lists it there).
for _name, (_func, _options) in COMMANDS.items():
    _at = next((i for i, o in enumerate(_options) if o.positional), len(_options))
    _options.insert(_at, x_arg(_name))

# Flask-Migrate's group options: `db -d DIR -x KEY=VAL CMD`. A command's own -d wins; the
# group's -x come before the command's (with_group_options).
GROUP_OPTIONS = [
    opt("-d", "--directory", help="Migration script directory (default is 'migrations'), "
                                  "for every command"),
    opt("-x", "--x-arg", multiple=True, metavar="KEY[=VALUE]",
        help="repeatable; added to the command's own -x (see its help for its keys)"),
]


def with_group_options(kwargs: dict, directory: str | None, x_args) -> dict:
    """A command's arguments with the `db` group's -d and -x merged in."""
    merged = {**kwargs, "x_arg": [*(x_args or ()), *(kwargs.get("x_arg") or ())] or None}
    if directory is not None and "directory" in kwargs and kwargs["directory"] is None:
        merged["directory"] = directory
    return merged


# --- both CLIs -------------------------------------------------------------------------


@contextmanager
def as_a_command():
    """One command run by a CLI: any error as one line, and a quick exit after it."""
    skip_the_collection_at_exit()
    with reported():
        yield


def skip_the_collection_at_exit() -> None:
    """At exit Python runs its cycle collector over everything start-up made (Flask,
    SQLAlchemy, the app), about a seventh of a no-op `db upgrade` here, to free memory the
    OS takes back anyway. Freezing it all (gc.freeze) as the process exits skips that scan.
    Only at exit, and only in a process that ran a command: an app importing the package
    keeps its collector as it is. Registered once, however many commands a process runs."""
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)


# --- Flask-Script: python manage.py db ... ----------------------------------------------


class DbCommand(flask_script.Command):
    """A `db` subcommand for Flask-Script's Manager, built with its public Command API."""

    def __init__(self, func, options) -> None:
        super().__init__()
        self.func = func
        self.__doc__ = func.__doc__
        self.option_list = [self.argparse_option(o) for o in options]

    @staticmethod
    def argparse_option(o: Opt) -> flask_script.Option:
        if o.positional:
            return flask_script.Option(o.dest, nargs=o.nargs, default=o.default, help=o.help)
        action = "store_true" if o.flag else "append" if o.multiple else "store"
        metavar = {"metavar": o.metavar} if o.metavar else {}
        return flask_script.Option(*o.flags, dest=o.dest, action=action,
                                   default=False if o.flag else o.default, help=o.help,
                                   **metavar)

    def run(self, **kwargs):
        return self.func(**kwargs)

    def __call__(self, app=None, *args, **kwargs):
        if isinstance(app, GroupOptions):  # the `db` Manager's -d and -x
            kwargs = with_group_options(kwargs, app.directory, app.x_args)
            app = app.app
        with as_a_command():
            running_module_is_importable()
            return super().__call__(app, *args, **kwargs)


class GroupOptions:
    """What the `db` Manager hands its command (Flask-Script passes each handler's result
    to the next): the app, and the group's -d and -x."""

    def __init__(self, app, directory: str | None, x_args) -> None:
        self.app = app
        self.directory = directory
        self.x_args = x_args


class DbScriptManager(DbManager):
    """The `db` Manager, whose own options (-d, -x) go to the command that runs."""

    def __call__(self, app=None, group_directory=None, group_x_arg=None):
        return GroupOptions(super().__call__(app), group_directory, group_x_arg)


def running_module_is_importable() -> None:
    """`python manage.py db upgrade` runs manage.py as __main__; a revision that imports the
    app's models from it (`from manage import db, User`) would run the module a second
    time, with a second app and `db` that the run's connection is not given to (see
    runner.app_session_on). Under its own name too, it is the module already running."""
    main = sys.modules.get("__main__")
    name = Path(getattr(main, "__file__", None) or "__main__").stem
    if name.isidentifier() and name != "__main__":
        sys.modules.setdefault(name, main)


def flask_script_manager() -> flask_script.Manager:
    """Flask-Migrate's MigrateCommand, with our commands."""
    manager = DbScriptManager(help="Perform database migrations",
                              description="Perform database migrations")
    for o in GROUP_OPTIONS:
        option = DbCommand.argparse_option(o)
        option.kwargs["dest"] = f"group_{o.dest}"  # argparse: the command's -d has its own
        option.kwargs["metavar"] = o.metavar or o.dest.upper()
        manager.add_option(*option.args, **option.kwargs)
    for name, (func, options) in COMMANDS.items():
        manager.add_command(name, DbCommand(func, options))
    return manager


# --- click: flask db ... ----------------------------------------------------------------


def click_param(o: Opt) -> click.Parameter:
    if o.positional:
        nargs = -1 if o.nargs in ("+", "*") else 1
        return click.Argument([o.dest], nargs=nargs, required=o.nargs not in ("?", "*"),
                              default=o.default)
    return click.Option([*o.flags, o.dest], is_flag=o.flag or None, multiple=o.multiple,
                        default=o.default if not o.flag else False, help=o.help,
                        metavar=o.metavar)


def click_command(name: str, func, options) -> click.Command:
    def callback(**kwargs):
        parent = click.get_current_context().parent  # `flask db -d DIR -x KEY CMD`
        group = parent.params if parent is not None else {}
        kwargs = with_group_options(kwargs, group.get("directory"), group.get("x_arg"))
        with as_a_command():
            return func(**kwargs)

    # `db downgrade -2` is a relative revision, as argparse (Flask-Script) reads it, not an option.
    settings = {"ignore_unknown_options": True} if name == "downgrade" else {}
    help, short_help = help_texts(func.__doc__)
    return DbCommandClick(name, context_settings=settings, callback=with_appcontext(callback),
                          params=[click_param(o) for o in options], help=help,
                          short_help=short_help)


db_group = DbGroup("db", help="Perform database migrations.",
                   params=[click_param(o) for o in GROUP_OPTIONS])
for _name, (_func, _options) in COMMANDS.items():
    db_group.add_command(click_command(_name, _func, _options))
