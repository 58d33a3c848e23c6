"""Snapshots of a SQLite file before a migration changes it, and putting one back.

Snapshots are copies made with SQLite's online backup API, in `backups/` beside the
database's real file, named `<stem>.<from>-<to>.<UTC time>.db`. Each is written under a
temporary name and renamed when complete, never readable by more users than the database
is, and only this database's own snapshots are rotated out (the newest few are kept).
"""
from __future__ import annotations

import os
import re
import shutil
import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

from .errors import MigrationError


def snapshot_pattern(path: Path) -> re.Pattern:
    """The names of this database's snapshots, as take_snapshot writes them."""
    return re.compile(re.escape(path.stem) + r"\.[0-9a-zA-Z_+]+-[0-9a-zA-Z_+]+\.\d{8}T\d{12}Z\.db")


def take_snapshot(path: Path, label: str, keep: int) -> Path:
    """Copy the SQLite file into backups/ beside it; print and return the copy's path."""
    path = path.resolve()
    backups = path.parent / "backups"
    backups.mkdir(exist_ok=True)
    # A run killed while copying left its partial copy; we hold the migration lock, so no
    # copy of this database is being written now.
    ours = snapshot_pattern(path)
    partial = re.compile(rf"\.({ours.pattern})\.partial(-journal)?")
    for leftover in backups.iterdir():
        if partial.fullmatch(leftover.name):
            leftover.unlink()
    size = path.stat().st_size
    free = shutil.disk_usage(backups).free
    if free < size:
        raise MigrationError(
            f"no room for a snapshot of {path.name} ({size} bytes) in {backups} ({free} bytes "
            "free); nothing changed. Free some space, or skip the snapshot with -x backup=off")
    snapshot = backups / f"{path.stem}.{label}.{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}.db"
    copy_database(path, snapshot, mode=path.stat().st_mode & 0o777)
    print(f"Snapshot of {path.name} saved to {snapshot}")
    mine = [p for p in backups.iterdir() if ours.fullmatch(p.name)]
    for old in sorted(mine, key=snapshot_time)[:-keep]:
        old.unlink()
    return snapshot


def snapshot_time(snapshot: Path) -> str:
    return snapshot.name.rsplit(".", 2)[-2]


def copy_database(source: Path, target: Path, mode: int) -> None:
    """Copy a SQLite database to a new file with the backup API, through a temporary file
    renamed into place, so a kill or a full disk leaves no partial copy behind."""
    partial = target.with_name(f".{target.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.close(fd)
    os.chmod(partial, mode)  # the umask may have narrowed it further; never widened
    try:
        with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(partial)) as dst:
            src.backup(dst)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def restore_into(snapshot: Path, database: Path, timeout: float) -> None:
    """Copy a snapshot over the live database in place, with the backup API: SQLite writes it
    in one transaction, so other connections see the old file or the new one."""
    with closing(sqlite3.connect(f"file:{snapshot}?mode=ro", uri=True, timeout=timeout)) as src, \
            closing(sqlite3.connect(database, timeout=timeout)) as dst:
        src.backup(dst)


def check_snapshot(snapshot: Path) -> list[str]:
    """What alembic_version says in a snapshot that SQLite finds whole; else one line why not."""
    if snapshot.stat().st_size == 0:
        raise MigrationError(f"{snapshot} is empty, not a snapshot; nothing changed")
    try:
        with closing(sqlite3.connect(f"file:{snapshot}?mode=ro", uri=True)) as conn:
            verdict = conn.execute("PRAGMA integrity_check").fetchone()[0]
            if verdict != "ok":
                raise MigrationError(f"{snapshot} is damaged ({verdict}); nothing changed")
            return [row[0] for row in conn.execute("SELECT version_num FROM alembic_version")]
    except sqlite3.DatabaseError as exc:
        raise MigrationError(f"{snapshot} is not a whole SQLite database ({exc}); nothing changed") from None
