"""Snapshots of a SQLite file before a migration changes it, and putting one back.

Snapshots are copies made with SQLite's online backup API, in `backups/` beside the
database, named `<stem>.<from>-<to>.<UTC time>.db`; the newest few are kept.
"""
from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path


def take_snapshot(path: Path, label: str, keep: int) -> Path:
    """Copy the SQLite file into backups/ beside it; print and return the copy's path."""
    backups = path.parent / "backups"
    backups.mkdir(exist_ok=True)
    snapshot = backups / f"{path.stem}.{label}.{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}.db"
    copy_database(path, snapshot)
    print(f"Snapshot of {path.name} saved to {snapshot}")
    for old in sorted(backups.glob(f"{path.stem}.*.db"), key=snapshot_time)[:-keep]:
        old.unlink()
    return snapshot


def snapshot_time(snapshot: Path) -> str:
    return snapshot.name.rsplit(".", 2)[-2]


def copy_database(source: Path, target: Path) -> None:
    """Copy one SQLite database over another with the backup API."""
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(target)) as dst:
        src.backup(dst)
