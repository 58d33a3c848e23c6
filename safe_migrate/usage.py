"""What the two CLIs say about how they are called: the `db` commands' usage lines and help
text, and "did you mean" for a mistyped command.

Flask-Script's Manager builds its parsers with argparse, and `flask db` with click 7; the
classes here adjust their public pieces (argparse's subcommand action, click's Group and
HelpFormatter) and change nothing a command does.
"""
from __future__ import annotations

import argparse
import inspect
import os
import sys

import click
from click.formatting import iter_rows, measure_table, term_len, wrap_text
from flask.cli import AppGroup

from .compat import flask_script


def close_command(name: str, commands) -> str | None:
    """The command `name` was probably meant to be (difflib's closest, if close enough)."""
    import difflib  # only for a mistyped command

    matches = difflib.get_close_matches(name, sorted(commands), n=1)
    return matches[0] if matches else None


def refuse_mistyped(name: str, commands) -> None:
    """A command name that is not one but is close to one: say which, one line, exit 2 (a
    usage error, as each CLI exits for one). A name close to none is left to the CLI's own
    usage message."""
    meant = close_command(name, commands)
    if meant is not None:
        print(f'Error: no command "{name}". Did you mean "{meant}"?', file=sys.stderr)
        sys.exit(2)


# --- Flask-Script -----------------------------------------------------------------------


class SuggestingChoices(dict):
    """argparse's subcommand choices (name: parser), which say "did you mean" when asked
    for a name they lack, before argparse's own "invalid choice"."""

    def __contains__(self, name) -> bool:
        if not super().__contains__(name):
            refuse_mistyped(name, self)
        return super().__contains__(name)


class DbManager(flask_script.Manager):
    """The `db` Manager: its subcommands' usage lines read `migrate_example.py db upgrade
    [-?] ...` (argparse would start them with the parent's usage text, or with `db` alone),
    and a mistyped subcommand gets "did you mean"."""

    def create_parser(self, prog, func_stack=(), parent=None):
        if parent is not None:  # added to the app's Manager: name the script, as it does
            prog = f"{os.path.basename(sys.argv[0])} {prog}"
        parser = super().create_parser(prog, func_stack, parent)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):  # every subcommand added
                action.choices = SuggestingChoices(action.choices)
        return parser


# --- click (flask db) -------------------------------------------------------------------


class GaplessFormatter(click.HelpFormatter):
    """click 7's definition lists put an empty line after every option whose help wraps,
    which reads as stray gaps; this writes them as click 8 does, without."""

    def write_dl(self, rows, col_max=30, col_spacing=2):
        rows = list(rows)
        widths = measure_table(rows)
        first_col = min(widths[0], col_max) + col_spacing
        for first, second in iter_rows(rows, len(widths)):
            self.write(f"{'':>{self.current_indent}}{first}")
            if not second:
                self.write("\n")
                continue
            if term_len(first) <= first_col - col_spacing:
                self.write(" " * (first_col - term_len(first)))
            else:
                self.write("\n" + " " * (first_col + self.current_indent))
            text_width = max(self.width - first_col - 2, 10)
            lines = wrap_text(second, text_width, preserve_paragraphs=True).splitlines() or [""]
            self.write(f"{lines[0]}\n")
            for line in lines[1:]:
                self.write(f"{'':>{first_col + self.current_indent}}{line}\n")


def gapless_help(command: click.Command, ctx: click.Context) -> str:
    """click's Command.get_help, with the GaplessFormatter."""
    formatter = GaplessFormatter(width=ctx.terminal_width, max_width=ctx.max_content_width)
    command.format_help(ctx, formatter)
    return formatter.getvalue().rstrip("\n")


def help_texts(doc: str | None) -> tuple[str, str]:
    """(help, short help) from a command's docstring: its indentation gone, and the short
    help the text before its first parenthesis, cut to fit the list of commands."""
    text = inspect.cleandoc(doc or "")
    # click's own shortening, through its public API (click.utils' helper is deprecated in 8.5).
    return text, click.Command(None, help=text.split(" (")[0]).get_short_help_str(45)


class DbCommandClick(click.Command):
    """A `flask db` subcommand whose help has no stray gaps."""

    def get_help(self, ctx: click.Context) -> str:
        return gapless_help(self, ctx)


class DbGroup(AppGroup):
    """`flask db`: help without stray gaps, and "did you mean" for a mistyped command."""

    def get_help(self, ctx: click.Context) -> str:
        return gapless_help(self, ctx)

    def resolve_command(self, ctx: click.Context, args):
        name = args[0] if args else None
        if name is not None and self.get_command(ctx, name) is None \
                and not name.startswith("-") and not ctx.resilient_parsing:
            refuse_mistyped(name, self.list_commands(ctx))
        return super().resolve_command(ctx, args)
