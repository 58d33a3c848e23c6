"""What the revision files say, cached: each revision's `db current` line, its file, the
history's heads, and what `db heads` and `db history` print.

Finding heads means importing every revision file (and Alembic), which costs more than the
rest of `db current` or of a deploy's `db upgrade` with nothing to do. Alembic's answer is
kept in the migrations folder's __pycache__, keyed by the sha256 of every file Alembic would
read (found by Alembic's own rules: version_locations, recursive_version_locations,
sourceless), with alembic.ini's [alembic] section and the Python that read them. Anything
the cache does not model (an option it does not know, a revision_environment, a symlink
among the revision files, a revision whose identifiers are not literals in its source, a
folder that does not exist) makes it step aside: None, and the command asks Alembic.
"""
from __future__ import annotations

import configparser
import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from .checksums import file_checksum

CACHE_NAME = "safe_migrate.revisions.json"
CACHE_FORMAT = 3  # what the index holds; a cache of another format is read anew

# The [alembic] options this module models, and those that do not change what Alembic
# reads from the revision files; any other option makes the cache step aside.
MODELLED = {"version_locations", "recursive_version_locations", "sourceless",
            "path_separator", "version_path_separator", "revision_environment"}
NOT_READING = {"script_location", "file_template", "truncate_slug_length", "timezone",
               "output_encoding", "sqlalchemy.url", "prepend_sys_path"}
SEPARATORS = {"space": " ", "newline": "\n", "os": os.pathsep, ":": ":", ";": ";"}
FALSE = ("", "false", "no", "off", "n", "f", "0")  # what Alembic's asbool reads as False
IDENTITY = ("revision", "down_revision", "branch_labels", "depends_on")
INDEX_SHAPE = {"lines": dict, "files": dict, "heads": list, "heads_lines": list,
               "history_lines": list}


def version_locations(directory: Path) -> tuple[list[Path], bool, bool, dict] | None:
    """(the folders Alembic reads revisions from, recursive, sourceless, the [alembic]
    options) as alembic.ini makes ScriptDirectory.from_config see them, or None for a
    configuration this module does not model."""
    if not os.path.isabs(directory) and ":" in str(directory):
        return None  # a package resource
    if not os.access(directory, os.F_OK):
        return None  # Alembic says "Path doesn't exist"
    ini_path = Path(directory, "alembic.ini")
    ini = configparser.ConfigParser({"here": ini_path.absolute().parent.as_posix()})
    try:
        ini.read(ini_path, encoding="locale")
        options = ({name: ini.get("alembic", name) for name in ini.options("alembic")
                    if name != "here"} if ini.has_section("alembic") else {})
    except (configparser.Error, UnicodeError, OSError):
        return None
    if (set(options) - MODELLED - NOT_READING
            or options.get("revision_environment", "").strip().lower() not in FALSE):
        return None
    raw = options.get("version_locations")
    listed = None
    if raw:
        names = [name for name in ("path_separator", "version_path_separator")
                 if name in options]
        if names:
            separator = SEPARATORS.get(options[names[0]])
            if separator is None:
                return None  # Alembic raises
            listed = [x.strip() for x in raw.split(separator) if x]
        else:
            import re

            listed = re.split(r", *|(?: +)", raw)  # Alembic's legacy split, as it has it
        if any(not os.path.isabs(x) and ":" in x for x in listed):
            return None  # a package resource
    locations = ([Path(x).absolute() for x in listed] if listed
                 else [Path(directory, "versions").absolute()])
    return (locations, options.get("recursive_version_locations") == "true",
            options.get("sourceless") == "true", options)


def is_candidate(name: str, sourceless: bool) -> bool:
    """Whether Alembic's Script._from_path reads a file of this name (its regexes)."""
    if name.startswith((".#", "__init__")):
        return False
    return name.endswith((".py", ".pyc", ".pyo") if sourceless else ".py")


def revision_files(location: Path, recursive: bool, sourceless: bool) -> list[str] | None:
    """The files under one version location that Alembic's Script._list_py_dir lists and
    _from_path may read, or None where something unusual (a symlink) is present. (Plain
    strings, not Paths: this runs on every cached command, for every file.)"""
    if location.name.endswith("__pycache__") or location.is_symlink():
        return None
    if not location.exists():
        return []  # Alembic skips it
    files, roots = [], [str(location)]
    try:
        while roots:
            root = roots.pop()
            names, others, subdirs = [], [], []
            with os.scandir(root) as entries:
                for entry in entries:
                    candidate = is_candidate(entry.name, sourceless)
                    if entry.is_symlink() and (candidate or recursive and entry.is_dir()):
                        return None  # Python versions walk these differently
                    if entry.is_dir():
                        subdirs.append(entry.path)
                    elif candidate and not entry.is_file():
                        return None
                    else:
                        (names if candidate else others).append(entry)
            if not root.endswith("__pycache__"):  # Alembic skips these folders' files
                files += [entry.path for entry in names]
                cached = os.path.join(root, "__pycache__")
                if sourceless and any(entry.name == "__pycache__" for entry in others):
                    return None  # a file where Alembic looks for a folder
                if sourceless and cached in subdirs:
                    stems = {entry.name.split(".")[0] for entry in names + others}
                    with os.scandir(cached) as entries:
                        for entry in entries:
                            if (entry.name.split(".")[0] not in stems
                                    and is_candidate(entry.name, sourceless)):
                                if entry.is_symlink() or not entry.is_file():
                                    return None
                                files.append(entry.path)
            if recursive:
                roots += subdirs
    except OSError:
        return None
    return files


def overlapping(locations: list[Path], recursive: bool) -> bool:
    """Whether two locations share files (Alembic warns and skips the second sighting)."""
    real = [location.resolve() for location in locations if location.exists()]
    return any(a == b or (recursive and a in b.parents)
               for i, a in enumerate(real) for b in real[i + 1:])


def file_hashes(directory: Path) -> tuple[str, dict[str, str]] | None:
    """(a key for everything Alembic's reading of the revision files depends on, {file:
    sha256}) or None where this module does not model the configuration."""
    found = version_locations(directory)
    if found is None:
        return None
    locations, recursive, sourceless, options = found
    if overlapping(locations, recursive):
        return None
    paths = []
    for location in locations:
        files = revision_files(location, recursive, sourceless)
        if files is None:
            return None
        paths += files
    hashes = {path: file_checksum(path) for path in paths}  # as checksums.py records
    key = hashlib.sha256(json.dumps(
        [CACHE_FORMAT, sys.version, sys.implementation.cache_tag, sorted(options.items()),
         [str(location) for location in locations]]).encode())
    key.update("\n".join(map("\0".join, sorted(hashes.items()))).encode())
    return key.hexdigest(), hashes


def is_index(index) -> bool:
    """Whether a cached index has the shape revision_index returns (else it is rebuilt)."""
    if not isinstance(index, dict) or any(not isinstance(index.get(name), kind)
                                          for name, kind in INDEX_SHAPE.items()):
        return False
    strings = [*index["lines"], *index["lines"].values(), *index["files"],
               *index["files"].values(), *index["heads"], *index["heads_lines"],
               *index["history_lines"]]
    return all(isinstance(s, str) for s in strings)


def revision_index(directory: Path, make_config: Callable | None = None) -> dict | None:
    """{"lines": {rev: line}, "files": {rev: file}, "heads": [rev, ...], "heads_lines": [...],
    "history_lines": [...], "hashes": {file: sha256}} for the migrations folder, as Alembic
    reads it, or None where Alembic's own reading is needed. make_config() gives the
    Alembic Config the commands use (by default, the extension's)."""
    found = file_hashes(directory)
    if found is None:
        return None
    key, hashes = found
    cache = Path(directory, "__pycache__", CACHE_NAME)
    try:
        cached = json.loads(cache.read_text())
        if (isinstance(cached, dict) and cached.get("format") == CACHE_FORMAT
                and cached.get("key") == key):
            index = cached.get("index")
            if index is None and "index" in cached:
                return None  # Alembic's answer is needed for these files (see read_revisions)
            if is_index(index):
                return {**index, "hashes": hashes}
    except (OSError, ValueError, RecursionError):  # unreadable, not JSON, absurdly nested
        pass
    index = read_revisions(directory, hashes, make_config)
    try:
        cache.parent.mkdir(exist_ok=True)
        partial = cache.with_name(f"{CACHE_NAME}.{os.getpid()}")
        partial.write_text(json.dumps({"format": CACHE_FORMAT, "key": key, "index": index}))
        os.replace(partial, cache)
    except OSError:
        pass  # a read-only checkout: no cache, same answer
    return None if index is None else {**index, "hashes": hashes}


def read_revisions(directory: Path, hashes: dict[str, str],
                   make_config: Callable | None = None) -> dict | None:
    """Alembic's answer for the revision files, or None when it is not a function of the
    hashed files: a file Alembic read that was not hashed, or a revision whose identifiers
    or docstring in its source differ from what Python ran (not literals, or stale
    bytecode)."""
    from alembic.script import ScriptDirectory

    if make_config is None:
        from .state import alembic_config

        def make_config():
            return alembic_config(str(directory))

    script = ScriptDirectory.from_config(make_config())
    revisions = list(script.walk_revisions())
    hashed = {str(Path(path).resolve()): path for path in hashes}
    for rev in revisions:
        if rev.path not in hashed or not (rev.path.endswith((".pyc", ".pyo"))
                                          or as_in_source(rev.module, rev.path)):
            return None
    return {"lines": {rev.revision: rev.cmd_format(False) for rev in revisions},
            "files": {rev.revision: hashed[rev.path] for rev in revisions},
            "heads": sorted(script.get_heads()),
            # Alembic's command.heads and command.history, line for line
            "heads_lines": [rev.cmd_format(False, include_branches=True, tree_indicators=False)
                            for rev in script.get_revisions(script.get_heads())],
            "history_lines": [rev.cmd_format(False, include_branches=True, include_doc=True,
                                             include_parents=True) for rev in revisions]}


def as_in_source(module, path: str) -> bool:
    """Whether the module Alembic loaded has the identifiers and docstring that its source
    assigns as literals: else its answer depends on more than the file's bytes."""
    import ast
    import inspect

    with open(path, "rb") as file:
        tree = ast.parse(file.read())
    facts = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets = [node.target]
        else:
            continue
        for target in targets:
            if isinstance(target, ast.Name) and target.id in IDENTITY:
                try:
                    facts[target.id] = ast.literal_eval(node.value)
                except ValueError:
                    return False
    missing = object()
    if any(facts.get(name, missing) != getattr(module, name, missing) for name in IDENTITY):
        return False
    first = tree.body[0] if tree.body else None  # (not ast.get_docstring: 3.11's needs ast.Str)
    source_doc = (first.value.value if isinstance(first, ast.Expr)
                  and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)
                  else None)
    doc = module.__doc__
    # Python 3.13 strips docstrings' indentation as it compiles them.
    return doc == source_doc or (doc is not None and source_doc is not None
                                 and inspect.cleandoc(doc) == inspect.cleandoc(source_doc))


def database_heads(connection: sa.engine.Connection) -> list[str]:
    """The revisions alembic_version records (none for a database without it)."""
    if not sa.inspect(connection).has_table("alembic_version"):
        return []
    return connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
