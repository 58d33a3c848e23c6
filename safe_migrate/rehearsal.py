"""`db upgrade --rehearse` and `db downgrade --rehearse`: run the pending revisions for real
on a copy of the SQLite file in a temporary folder, report each one (its time, the rows of
the tables it changed), and throw the copy away. The real file is only read, through
SQLite's backup API, so it stays byte-identical; nothing is recorded and no snapshot taken.
"""
from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from .errors import MigrationError
from .snapshots import copy_database


@contextmanager
def on_a_copy(state) -> Iterator[Path]:
    """Point the app's migration runs at a copy of its SQLite file for the block."""
    if state.path is None:
        raise MigrationError("--rehearse works on SQLite files only so far; on PostgreSQL, "
                             "rehearse on a restored copy of the database")
    if not state.path.exists():
        raise MigrationError(f"no database at {state.path} to rehearse on")
    with tempfile.TemporaryDirectory(prefix="migrate-rehearsal-") as folder:
        copy = Path(folder) / state.path.name
        copy_database(state.path, copy, 0o600, state.settings.lock_timeout)
        print(f"Rehearsing on a copy of {state.path.name} in {folder}; {state.path} is not "
              "changed")
        engine = state.listen(sa.create_engine(
            f"sqlite:///{copy}", poolclass=sa.pool.NullPool,
            connect_args={"timeout": state.settings.lock_timeout}))
        real_path = state.path
        state.path, state.rehearsal_engine = copy, engine
        try:
            yield copy
        finally:
            state.path, state.rehearsal_engine = real_path, None
            engine.dispose()


def rows_before_after(before: dict[str, int], after: dict[str, int]) -> str:
    """`company 10 -> 10, employee 1000 -> 0, firm - -> 3` (- : no such table)."""
    return ", ".join(f"{table} {before.get(table, '-')} -> {after.get(table, '-')}"
                     for table in sorted(set(before) | set(after))) or "no tables"
