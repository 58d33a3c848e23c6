"""What the revision files say, cached: each revision's `db current` line, its file, the
history's heads, and what `db heads` and `db history` print.

Finding heads means importing every revision file (and Alembic), which costs more than the
rest of `db current` or of a deploy's `db upgrade` with nothing to do. The answer is kept in
versions/__pycache__ until a file there changes: by name, size and mtime, as Python checks
its bytecode. Only what the cache says about the files is trusted; their contents (the
checksums of applied revisions) are read each time.
"""
from __future__ import annotations

import configparser
import json
import os
from pathlib import Path

import sqlalchemy as sa

CACHE_NAME = "safe_migrate.revisions.json"
CACHE_FORMAT = 2  # what the index holds; a cache of another format is read anew


def revision_index(directory: Path) -> dict | None:
    """{"lines": {rev: line}, "files": {rev: file name}, "heads": [rev, ...], "heads_lines":
    [...], "history_lines": [...]} for the migrations folder, or None where Alembic's own
    reading is needed (version_locations, or a revision_environment that runs env.py)."""
    ini = configparser.ConfigParser()
    ini.read(directory / "alembic.ini")
    if (ini.get("alembic", "version_locations", fallback=None)
            or ini.get("alembic", "revision_environment", fallback="false").lower()
            in ("true", "1", "yes", "on")):
        return None
    versions = directory / "versions"
    signature = sorted([e.name, e.stat().st_size, e.stat().st_mtime_ns]
                       for e in os.scandir(versions) if e.name.endswith(".py"))
    cache = versions / "__pycache__" / CACHE_NAME
    try:
        cached = json.loads(cache.read_text())
        if cached["format"] == CACHE_FORMAT and cached["signature"] == signature:
            return cached["index"]
    except (OSError, ValueError, KeyError):
        pass
    index = read_revisions(directory)
    try:
        cache.parent.mkdir(exist_ok=True)
        cache.write_text(json.dumps({"format": CACHE_FORMAT, "signature": signature,
                                     "index": index}))
    except OSError:
        pass  # a read-only checkout: no cache, same answer
    return index


def read_revisions(directory: Path) -> dict:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(directory))
    revisions = list(script.walk_revisions())
    return {"lines": {rev.revision: rev.cmd_format(False) for rev in revisions},
            "files": {rev.revision: Path(rev.path).name for rev in revisions},
            "heads": sorted(script.get_heads()),
            # Alembic's command.heads and command.history, line for line
            "heads_lines": [rev.cmd_format(False, include_branches=True, tree_indicators=False)
                            for rev in script.get_revisions(script.get_heads())],
            "history_lines": [rev.cmd_format(False, include_branches=True, include_doc=True,
                                             include_parents=True) for rev in revisions]}


def database_heads(connection: sa.engine.Connection) -> list[str]:
    """The revisions alembic_version records (none for a database without it)."""
    if not sa.inspect(connection).has_table("alembic_version"):
        return []
    return connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
