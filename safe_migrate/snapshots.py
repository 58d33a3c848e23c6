"""Snapshots of a SQLite file before a migration changes it, and putting one back.

Snapshots are copies made with SQLite's online backup API, in `backups/` beside the
database's real file, named `<stem>.<from>-<to>.<UTC time>.db`. Each is written under a
temporary name and renamed when complete, never readable by more users than the database
is, and only this database's own snapshots are rotated out (the newest few are kept).
A database migrated by this package holds a random identity in `migration_database`, which
its snapshots carry, so that a restore can tell its snapshots from other files.
"""
from __future__ import annotations

import os
import re
import shutil
import sqlite3
import time
import uuid
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from .checksums import CHECKSUM_TABLE
from .errors import MigrationError

IDENTITY_TABLE = "migration_database"
# Tables of ours and Alembic's, which are no part of the app's schema or data.
BOOKKEEPING = {"alembic_version", CHECKSUM_TABLE, IDENTITY_TABLE}


def snapshot_pattern(path: Path) -> re.Pattern:
    """The names of this database's snapshots, as take_snapshot writes them."""
    return re.compile(re.escape(path.stem) + r"\.[0-9a-zA-Z_+]+-[0-9a-zA-Z_+]+\.\d{8}T\d{12}Z\.db")


def take_snapshot(path: Path, label: str, timeout: float) -> Path:
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
    copy_database(path, snapshot, path.stat().st_mode & 0o777, timeout)
    print(f"Snapshot of {path.name} saved to {snapshot}")
    return snapshot


def rotate_snapshots(path: Path, keep: int) -> None:
    """Delete all but the newest `keep` of this database's snapshots (after a run that
    succeeded: a failed one pushes none out)."""
    path = path.resolve()
    ours = snapshot_pattern(path)
    backups = path.parent / "backups"
    mine = [p for p in backups.iterdir() if ours.fullmatch(p.name)] if backups.is_dir() else []
    for old in sorted(mine, key=snapshot_time)[:-keep]:
        old.unlink()


def snapshot_time(snapshot: Path) -> str:
    return snapshot.name.rsplit(".", 2)[-2]


def copy_database(source: Path, target: Path, mode: int, timeout: float) -> None:
    """Copy a SQLite database to a new file with the backup API, through a temporary file
    renamed into place, so a kill or a full disk leaves no partial copy behind."""
    partial = target.with_name(f".{target.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.close(fd)
    os.chmod(partial, mode)  # the umask may have narrowed it further; never widened
    try:
        with closing(sqlite3.connect(source, timeout=timeout)) as src, \
                closing(sqlite3.connect(partial)) as dst:
            backup(src, dst, timeout)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def restore_into(snapshot: Path, database: Path, timeout: float) -> None:
    """Copy a snapshot over the live database in place, with the backup API: SQLite writes it
    in one transaction, so other connections see the old file or the new one."""
    with closing(read_only(snapshot, timeout)) as src, \
            closing(sqlite3.connect(database, timeout=timeout)) as dst:
        backup(src, dst, timeout)


def backup(src: sqlite3.Connection, dst: sqlite3.Connection, timeout: float) -> None:
    """SQLite's online backup from src to dst, giving up after `timeout` seconds of finding
    either locked (Python's backup() would retry for ever)."""
    deadline = time.monotonic() + timeout

    def give_up_at_deadline(status, remaining, total):
        if status in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) and time.monotonic() > deadline:
            raise sqlite3.OperationalError("database is locked")

    src.backup(dst, progress=give_up_at_deadline)


def check_snapshot(snapshot: Path) -> tuple[list[str], str | None]:
    """What alembic_version says in a snapshot that SQLite finds whole, and the identity of
    the database it was taken from; else one line why not."""
    if snapshot.stat().st_size == 0:
        raise MigrationError(f"{snapshot} is empty, not a snapshot; nothing changed")
    try:
        with closing(read_only(snapshot)) as conn:
            verdict = conn.execute("PRAGMA integrity_check").fetchone()[0]
            if verdict != "ok":
                raise MigrationError(f"{snapshot} is damaged ({verdict}); nothing changed")
            revisions = [row[0] for row in conn.execute("SELECT version_num FROM alembic_version")]
            return revisions, identity(conn)
    except sqlite3.DatabaseError as exc:
        raise MigrationError(f"{snapshot} is not a whole SQLite database ({exc}); nothing changed") from None


def read_only(path: Path, timeout: float = 5.0) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout)


def identity(conn: sqlite3.Connection) -> str | None:
    """The identity of the database `conn` reads, or None if it has none."""
    try:
        row = conn.execute(sqlite_sql(sa.select(sa.column("id")).select_from(
            sa.table(IDENTITY_TABLE)))).fetchone()
    except sqlite3.OperationalError:  # no such table
        return None
    return row[0] if row else None


def identity_table() -> sa.Table:
    return sa.Table(IDENTITY_TABLE, sa.MetaData(),
                    sa.Column("id", sa.String(32), primary_key=True))


def has_identity(connection: sa.engine.Connection) -> bool:
    if not sa.inspect(connection).has_table(IDENTITY_TABLE):
        return False
    return connection.execute(sa.select(identity_table().c.id)).first() is not None


def give_identity(connection: sa.engine.Connection) -> None:
    """Record a random identity in this database, once (in a revision's transaction)."""
    table = identity_table()
    table.create(connection, checkfirst=True)
    if connection.execute(sa.select(table.c.id)).first() is None:
        connection.execute(table.insert().values(id=uuid.uuid4().hex))


def sqlite_sql(query) -> str:
    """A query without values, as SQLite's SQL: SQLAlchemy quotes every name in it."""
    from sqlalchemy.dialects import sqlite

    return str(query.compile(dialect=sqlite.dialect()))


def rows_only_in(database: Path, snapshot: Path, timeout: float) -> dict[str, int]:
    """{table: rows} of the database's rows that the snapshot does not hold (compared on the
    columns both have), for every table that has some."""
    with closing(read_only(database, timeout)) as conn:
        conn.execute("ATTACH ? AS snapshot", (f"file:{snapshot}?mode=ro",))
        tables = [row[0] for row in conn.execute(
            "SELECT name FROM main.sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
            if row[0] not in BOOKKEEPING]
        lost = {}
        for table in tables:
            columns = [row[0] for row in conn.execute(
                "SELECT name FROM pragma_table_info(?, 'main') ORDER BY cid", (table,))]
            theirs = {row[0] for row in conn.execute(
                "SELECT name FROM pragma_table_info(?, 'snapshot')", (table,))}
            common = [sa.column(c) for c in columns if c in theirs]
            ours = sa.table(table, schema="main")
            if common:
                gone = sa.except_(
                    sa.select(*common).select_from(ours),
                    sa.select(*common).select_from(sa.table(table, schema="snapshot")))
                query = sa.select(sa.func.count()).select_from(gone.subquery())
            else:
                query = sa.select(sa.func.count()).select_from(ours)
            count = conn.execute(sqlite_sql(query)).fetchone()[0]
            if count:
                lost[table] = count
        return lost
