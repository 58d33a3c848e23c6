"""The `-x KEY[=VALUE]` options: which keys each command takes, what each does (the `-x`
help of each command, cli.py), and the one parser that reads them into `RunOptions`.

An unknown key or a malformed value is refused with one line naming the keys the command
knows, before anything runs: a typo (`-x yse`, `-x backup=of`) must not be ignored, as
Alembic's own `-x` would. The commands (commands.py) parse their options first thing; the
runner (runner.py) parses what Alembic hands env.py, which also covers a run started some
other way (`alembic -x ... upgrade`), against every key there is.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import MigrationError


def no_value(value: str | None) -> bool:
    return value is None


def a_name(value: str | None) -> bool:
    return bool(value and value.strip())


def a_rename(value: str | None) -> bool:
    """TABLE.OLD:NEW (a column) or OLD:NEW (a table): NEW is a bare name."""
    old, colon, new = (value or "").partition(":")
    return bool(colon) and all(part.strip() for part in old.split(".")) and a_name(new) \
        and "." not in new


def the_word(word: str):
    def check(value: str | None) -> bool:
        return value == word

    return check


class Key:
    """One -x key: its form in help and errors, what it does, and the values it takes."""

    def __init__(self, form: str, help: str, valid) -> None:
        self.form = form
        self.help = help
        self.valid = valid  # value after "=" (None without one) -> bool


KEYS = {
    "yes": Key("yes", "answer yes to the question asked before rows are lost", no_value),
    "backup": Key("backup=off", "take no snapshot of the SQLite file first", the_word("off")),
    "lose": Key("lose=TABLE", "accept what a SQLite table copy of TABLE cannot keep", a_name),
    "rename": Key("rename=TABLE.OLD:NEW", "column OLD of TABLE was renamed NEW (a table: "
                                          "rename=OLD:NEW), not dropped", a_rename),
    "names": Key("names=convention", "rename constraints and indexes that differ only by name "
                                     "to the models' naming convention", the_word("convention")),
    "foreign": Key("foreign", "restore a snapshot taken from another database", no_value),
}

# The keys each command takes, in the order its help lists them.
COMMAND_KEYS = {
    "upgrade": ("backup", "lose"),
    "downgrade": ("yes", "backup", "lose"),
    "revision": ("rename", "names"),
    "migrate": ("rename", "names"),
    "restore": ("yes", "foreign"),
}


@dataclass(frozen=True)
class RunOptions:
    """What a command's -x options say, with their defaults."""

    yes: bool = False                      # -x yes
    backup: bool = True                    # -x backup=off: False
    lose: frozenset[str] = frozenset()     # -x lose=TABLE, repeatable
    foreign: bool = False                  # -x foreign
    # -x rename=company.clocation:location -> ("company.clocation", "company.location");
    # -x rename=company:firm -> ("company", "firm"); repeatable
    renames: tuple[tuple[str, str], ...] = ()
    names_convention: bool = False         # -x names=convention


def keys_of(command: str | None) -> tuple[str, ...]:
    """The keys a command takes; every key for a run whose command is not known (None)."""
    return tuple(sorted(KEYS)) if command is None else COMMAND_KEYS.get(command, ())


def x_help(command: str) -> str:
    """The -x option's help for one command: its keys and what each does."""
    if not COMMAND_KEYS.get(command):
        return "repeatable; this command takes no keys: any is refused"
    return "repeatable; " + "; ".join(
        f"{KEYS[key].form}: {KEYS[key].help}" for key in COMMAND_KEYS[command])


def refused(problem: str, item: str, command: str | None) -> MigrationError:
    """The one line for an unknown or invalid option: the keys the command knows, and
    which commands take an unknown key that is another command's."""
    known = ", ".join(KEYS[k].form for k in keys_of(command)) or "none"
    if command is None:
        return MigrationError(f"{problem} -x option {item!r}; known: {known}")
    others = [name for name, keys in COMMAND_KEYS.items()
              if problem == "unknown" and item in keys and name != command]
    taken = f" ({', '.join(others)} take{'s' if len(others) == 1 else ''} it)" if others else ""
    return MigrationError(f"{problem} -x option {item!r} for {command}{taken}; known: {known}")


def run_options(x_arg, command: str | None = None) -> RunOptions:
    """Parse `-x` values (a list or tuple of `KEY` and `KEY=VALUE`, or None) for a command
    ("upgrade", "restore", ...; None: any key); MigrationError for an unknown key or a
    malformed value."""
    known = keys_of(command)
    found: dict[str, list] = {key: [] for key in KEYS}
    for item in x_arg or ():
        key, equals, value = item.partition("=")
        if key not in known:
            raise refused("unknown", key, command)
        if not KEYS[key].valid(value if equals else None):
            raise refused("invalid", item, command)
        found[key].append(value)
    renames = []
    for value in found["rename"]:
        old, _, new = value.partition(":")
        table = old.rpartition(".")[0]
        renames.append((old, f"{table}.{new}" if table else new))
    return RunOptions(yes=bool(found["yes"]), backup=not found["backup"],
                      lose=frozenset(found["lose"]), foreign=bool(found["foreign"]),
                      renames=tuple(renames), names_convention=bool(found["names"]))
