"""Snapshots of a SQLite file before a migration changes it, and putting one back.

Snapshots are copies made with SQLite's online backup API, in `backups/` beside the
database's real file, named `<file name>.<from>-<to>.<UTC time>.db` (for data.db:
`data.db.a1-b2.20250101T120000000000Z.db`): the full file name, so that `data.db` and
`data.sqlite` in one folder never share snapshots. Each is written under a temporary name and
renamed when complete, in rollback (DELETE) journal mode whatever the database's, with the
database's permission bits (never wider), and only this database's own snapshots are rotated
out: the newest are kept, at most MIGRATE_SNAPSHOTS_KEEP of them and MIGRATE_SNAPSHOTS_MAX_MB
together, and a snapshot the disk has no room for is refused before anything changes (counting
the room rotation frees). backups/ gets a .gitignore of `*`: snapshots hold the app's data. Snapshots named by earlier versions, `<stem>.<from>-<to>.
<time>.db`, stay restorable but are never rotated: their name cannot tell `data.db`'s from
`data.sqlite`'s. A snapshot is only ever opened read-only and immutable, so reading one leaves
no -wal, -shm or -journal file in backups/.
A database migrated by this package holds a random identity in `migration_database`, which
its snapshots carry, so that a restore can tell its snapshots from other files.
A restore copies a snapshot over a readable database with the backup API, in place. A database
that SQLite cannot read (damaged), or a missing one, gets a copy of the snapshot renamed into
its place once no process has the old file open; the damaged file and its -wal or -journal
are kept in backups/, never replayed onto the snapshot.
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import sqlite3
import time
import uuid
from contextlib import closing, contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

import sqlalchemy as sa

from .checksums import CHECKSUM_TABLE
from .errors import MigrationError
from .journal import JOURNAL_TABLE
from .progress import human_size, write_now

IDENTITY_TABLE = "migration_database"
# Tables of ours and Alembic's, which are no part of the app's schema or data.
BOOKKEEPING = {"alembic_version", CHECKSUM_TABLE, IDENTITY_TABLE, JOURNAL_TABLE}
# `<from>-<to>.<UTC time>.db`, after the database's name: neither revision label has a dot,
# so a name is the snapshot of one database only (the part before the label).
SNAPSHOT_SUFFIX = r"\.[0-9a-zA-Z_+]+-[0-9a-zA-Z_+]+\.\d{8}T\d{12}Z\.db"
# The files SQLite keeps beside a database while it is in use, or after a crash.
SIDE_FILES = ("-journal", "-wal", "-shm")
# SQLite's locks (os_unix.c): on the database file, the PENDING and RESERVED bytes and the
# 510 SHARED bytes from 0x40000000; on the -shm file, the 8 WAL locks and the byte every
# open WAL connection holds (120 to 128). Whoever holds none of them has nothing in progress.
DATABASE_LOCK_BYTES = (0x40000000, 512)
SHM_LOCK_BYTES = (120, 9)


def utc_stamp() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"


def snapshot_pattern(path: Path) -> re.Pattern:
    """The names of this database's snapshots, as take_snapshot writes them (the full file
    name, then the revisions and the time)."""
    return re.compile(re.escape(path.name) + SNAPSHOT_SUFFIX)


def old_snapshot_pattern(path: Path) -> re.Pattern:
    """The names earlier versions gave snapshots: the stem alone, which data.db and
    data.sqlite share (restorable, never rotated)."""
    return re.compile(re.escape(path.stem) + SNAPSHOT_SUFFIX)


def is_named_for(snapshot: Path, database: Path) -> bool:
    """Whether the snapshot's file name says it was taken of this database (in either
    naming)."""
    return any(pattern(database).fullmatch(snapshot.name)
               for pattern in (snapshot_pattern, old_snapshot_pattern))


def name_part(revisions: str) -> str:
    """A revision label as it may stand in a snapshot's name: Alembic allows any characters
    in a revision id (`rel1.2`, `a-b`), a name allows letters, digits, _ and +."""
    return re.sub(r"[^0-9a-zA-Z_+]", "_", revisions) or "_"


def take_snapshot(path: Path, start: str, end: str, timeout: float, keep: int = 10,
                  max_bytes: int | None = None) -> Path:
    """Copy the SQLite file into backups/ beside it, named for the revisions it goes from
    and to; print and return the copy's path. `keep` and `max_bytes` are the caps that
    rotation keeps to (see make_room)."""
    label = f"{name_part(start)}-{name_part(end)}"
    path = path.resolve()
    backups = path.parent / "backups"
    backups.mkdir(exist_ok=True)
    # A run killed while copying left its partial copy; we hold the migration lock, so no
    # copy of this database is being written now.
    ours = snapshot_pattern(path)
    partial = re.compile(rf"\.({ours.pattern})\.partial(-journal|-wal|-shm)?")
    for leftover in backups.iterdir():
        if partial.fullmatch(leftover.name):
            leftover.unlink()
    make_room(path, backups, keep, max_bytes)
    snapshot = backups / f"{path.name}.{label}.{utc_stamp()}.db"
    write_now(f"Snapshotting {path.name} ({human_size(path.stat().st_size)})...")
    start = time.monotonic()
    copy_database(path, snapshot, path.stat().st_mode & 0o777, timeout)
    ignored_by_git(backups)
    print(f"Snapshot of {path.name} ({time.monotonic() - start:.2f} s) saved to {snapshot}")
    return snapshot


def say_what_protects(url: sa.engine.URL) -> None:
    """On MySQL and MariaDB, where there is no file to copy: the snapshot step's line instead,
    naming what protects the data (and the dump command, when the server's dump tool is on
    PATH: the package takes no dump, which would need the password on a command line and
    could take hours). Nothing on the other backends."""
    if url.get_backend_name() != "mysql":
        return
    tool = shutil.which("mariadb-dump") or shutil.which("mysqldump")
    port = f" -P {url.port}" if url.port else ""
    backup = (f"for a backup first: {Path(tool).name} --single-transaction -h "
              f"{url.host or 'localhost'}{port} -u {url.username} -p {url.database} > "
              f"{url.database}.sql" if tool else "for a backup first, use the server's dump tool")
    print("No snapshot on MySQL (a server, no file to copy): what protects the data is "
          "`db upgrade --rehearse` (a scratch copy first) and the journal of each revision's "
          f"committed statements (a failed one resumes); {backup}")


class Held(NamedTuple):
    """One snapshot in backups/, as rotation sees it."""

    time: str                 # the UTC time in its name: names sort by it
    size: int                 # bytes
    path: Path | None = None  # None: the snapshot about to be taken


def rotated_out(held: list[Held], keep: int, max_bytes: int | None) -> list[Held]:
    """The snapshots rotation removes: all but the newest ones that fit in both caps, at
    most `keep` of them and `max_bytes` together (None: no size cap). The newest is always
    kept (it undoes the last run); once one does not fit, every older one goes too."""
    newest_first = sorted(held, key=lambda h: h.time, reverse=True)
    total = 0
    for number, snapshot in enumerate(newest_first):
        total += snapshot.size
        if number and (number >= keep or (max_bytes is not None and total > max_bytes)):
            return newest_first[number:]
    return []


def held_snapshots(path: Path) -> list[Held]:
    """This database's rotatable snapshots in its backups/ (named for its full file name)."""
    ours = snapshot_pattern(path)
    backups = path.parent / "backups"
    if not backups.is_dir():
        return []
    return [Held(snapshot_time(p), p.stat().st_size, p) for p in backups.iterdir()
            if ours.fullmatch(p.name)]


def rotate_snapshots(path: Path, keep: int, max_bytes: int | None = None) -> None:
    """Delete this database's snapshots beyond the caps (rotated_out), after a run that
    succeeded: a failed one pushes none out. Only snapshots named for this file, in its own
    backups/, ever go."""
    for old in rotated_out(held_snapshots(path.resolve()), keep, max_bytes):
        old.path.unlink(missing_ok=True)


def make_room(path: Path, backups: Path, keep: int, max_bytes: int | None) -> None:
    """Refuse a snapshot that would not fit, before anything changes: one larger than the
    size cap alone, or one the disk has no room for even counting the snapshots that rotation
    removes once this one is taken. Those are deleted first only when the disk needs their
    room (else they go after the run, as rotate_snapshots says)."""
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise MigrationError(
            f"a snapshot of {path.name} ({size} bytes) is larger than MIGRATE_SNAPSHOTS_MAX_MB "
            f"({max_bytes} bytes); nothing changed. Raise it, or skip the snapshot with "
            "-x backup=off")
    free = shutil.disk_usage(backups).free
    if free >= size:
        return
    coming = Held(utc_stamp(), size)
    doomed = [h for h in rotated_out([*held_snapshots(path), coming], keep, max_bytes)
              if h is not coming]
    freed = sum(h.size for h in doomed)
    if free + freed < size:
        raise MigrationError(
            f"no room for a snapshot of {path.name} ({size} bytes) in {backups} ({free} bytes "
            f"free, {freed} more once rotation removes older snapshots); nothing changed. Free "
            "some space, or skip the snapshot with -x backup=off")
    for old in doomed:
        old.path.unlink(missing_ok=True)
    print(f"Removed {len(doomed)} older snapshot(s) of {path.name} to make room")


GITIGNORE = ("# Written by safe_migrate: snapshots of the SQLite database stay out of git.\n"
             "# (`*` covers this file too, so git ignores the whole folder.)\n*\n")


def ignored_by_git(backups: Path) -> None:
    """Write backups/.gitignore (`*`) unless there is one: snapshots hold the app's data,
    which does not belong in a repository. One the user has edited stays as it is."""
    ignore = backups / ".gitignore"
    if not ignore.exists():
        # After a snapshot fitted: a refused one leaves backups/ as it was. A disk too full
        # for these few bytes fails no migration; the next snapshot writes it.
        with suppress(OSError):
            ignore.write_text(GITIGNORE)


def snapshot_time(snapshot: Path) -> str:
    return snapshot.name.rsplit(".", 2)[-2]


def copy_database(source: Path, target: Path, mode: int, timeout: float) -> None:
    """Copy a SQLite database to a new file with the backup API, through a temporary file
    renamed into place, so a kill or a full disk leaves no partial copy behind."""
    partial = target.with_name(f".{target.name}.partial")
    try:
        with closing(sqlite3.connect(source, timeout=timeout)) as src:
            write_copy(src, partial, mode, timeout)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def write_copy(src: sqlite3.Connection, target: Path, mode: int, timeout: float) -> None:
    """Write what `src` reads to the file `target` (made afresh, with exactly `mode`), in
    rollback journal mode: the backup API copies a WAL database's WAL flag too, and a WAL
    file would leave -wal and -shm files beside it whenever it is opened."""
    for suffix in SIDE_FILES:  # a killed copy's: a hot journal would roll back into this one
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.close(fd)
    os.chmod(target, mode)  # the umask may have narrowed it further; never widened
    with closing(sqlite3.connect(target)) as dst:
        backup(src, dst, timeout)
        dst.execute("PRAGMA journal_mode=DELETE")


def restore_into(snapshot: Path, database: Path, timeout: float) -> None:
    """Copy a snapshot over the live database in place, with the backup API: SQLite writes it
    in one transaction, so other connections see the old file or the new one (and the
    database keeps its journal mode)."""
    with closing(open_snapshot(snapshot, timeout)) as src, \
            closing(sqlite3.connect(database, timeout=timeout)) as dst:
        backup(src, dst, timeout)


def replace_database(snapshot: Path, database: Path, timeout: float) -> Path | None:
    """Put a copy of the snapshot in place of a database SQLite cannot read, or of a missing
    one: written beside it, then renamed over it once no process has the old file open. The
    old file (hard-linked, or copied) and its -journal and -wal go to backups/ as
    `<name>.corrupt.<time>` (`<name>.missing.<time>-wal` beside a missing one), so that SQLite
    never replays them onto the snapshot; its -shm is deleted. Returns the kept file's path."""
    existed = database.exists()
    old = database.stat() if existed else snapshot.stat()
    staged = database.with_name(f".{database.name}.restore.partial")
    try:
        with closing(open_snapshot(snapshot, timeout)) as src:
            write_copy(src, staged, old.st_mode & 0o777, timeout)
        if existed and os.geteuid() == 0 and (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
            os.chown(staged, old.st_uid, old.st_gid)  # the app's file stays the app's
        with nobody_using(database, timeout) as database_fd:
            kept = set_aside(database, database_fd, existed)
            os.replace(staged, database)
    finally:
        staged.unlink(missing_ok=True)
    return kept


@contextmanager
def nobody_using(database: Path, timeout: float):
    """Hold SQLite's own locks on the database file and its -shm (whichever exist), so that
    no connection is in a transaction or has it open in WAL mode, nor can start to; wait up
    to `timeout` seconds for them. Yields the database file's descriptor (None if missing):
    POSIX drops a process's locks on a file when it closes any descriptor of it, so the file
    is read through this one while they are held."""
    deadline = time.monotonic() + timeout
    held = []
    try:
        for path, (start, length) in ((database, DATABASE_LOCK_BYTES),
                                      (Path(f"{database}-shm"), SHM_LOCK_BYTES)):
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                held.append(None)
                continue
            held.append(fd)
            while True:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, length, start)
                    break
                except OSError:  # EAGAIN or EACCES: another process holds one
                    if time.monotonic() >= deadline:
                        raise MigrationError(
                            f"another process has {database} open (the app?); gave up waiting "
                            "after MIGRATE_LOCK_TIMEOUT, nothing changed. Stop it and retry"
                        ) from None
                    time.sleep(0.05)
        yield held[0]
    finally:
        for fd in held:
            if fd is not None:
                os.close(fd)


def set_aside(database: Path, database_fd: int | None, existed: bool) -> Path | None:
    """Move the unreadable database's files into backups/ (see replace_database)."""
    backups = database.parent / "backups"
    backups.mkdir(exist_ok=True)
    kept = backups / f"{database.name}.{'corrupt' if existed else 'missing'}.{utc_stamp()}"
    if database_fd is not None:
        try:
            os.link(database, kept)  # the same file, no copy: it stays as it is
        except OSError:  # another filesystem, or one without hard links
            copy_bytes(database_fd, kept, os.fstat(database_fd).st_mode & 0o777)
    for suffix in ("-journal", "-wal"):
        side = Path(f"{database}{suffix}")
        if side.exists():
            shutil.move(side, f"{kept}{suffix}")
    Path(f"{database}-shm").unlink(missing_ok=True)  # an index of the -wal, nothing more
    return kept if database_fd is not None else None


def copy_bytes(fd: int, target: Path, mode: int) -> None:
    """Copy the open file `fd` to `target`, with `mode`, through a temporary name."""
    partial = target.with_name(f".{target.name}.partial")
    try:
        out = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.chmod(partial, mode)
            os.lseek(fd, 0, os.SEEK_SET)
            while chunk := os.read(fd, 1 << 20):
                os.write(out, chunk)
        finally:
            os.close(out)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


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
        with closing(open_snapshot(snapshot)) as conn:
            verdict = conn.execute("PRAGMA integrity_check").fetchone()[0]
            if verdict != "ok":
                raise MigrationError(f"{snapshot} is damaged ({verdict}); nothing changed")
            revisions = [row[0] for row in conn.execute("SELECT version_num FROM alembic_version")]
            return revisions, identity(conn)
    except sqlite3.DatabaseError as exc:
        raise MigrationError(f"{snapshot} is not a whole SQLite database ({exc}); nothing changed") from None


def is_damage(exc: sqlite3.DatabaseError) -> bool:
    """Whether SQLite failed on a file because the file is not (or no longer) a database."""
    return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT)


def applied_revisions(conn: sqlite3.Connection) -> list[str]:
    """The revisions alembic_version holds ([] without the table)."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                    ("alembic_version",)).fetchone() is None:
        return []
    return sorted(row[0] for row in conn.execute("SELECT version_num FROM alembic_version"))


def file_uri(path: Path, query: str) -> str:
    """A SQLite URI for the file (its name quoted: `?`, `#` and `%` are URI syntax)."""
    return f"file:{quote(str(path))}?{query}"


def read_only(path: Path, timeout: float = 5.0) -> sqlite3.Connection:
    """A read-only connection to a live database (which others may change meanwhile)."""
    return sqlite3.connect(file_uri(path, "mode=ro"), uri=True, timeout=timeout)


def open_snapshot(path: Path, timeout: float = 5.0) -> sqlite3.Connection:
    """A read-only connection to a snapshot, as the immutable file it is: SQLite takes no
    locks and creates no -wal, -shm or -journal beside it, even for a WAL-mode file."""
    return sqlite3.connect(file_uri(path, "mode=ro&immutable=1"), uri=True, timeout=timeout)


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
        conn.execute("ATTACH ? AS snapshot", (file_uri(snapshot, "mode=ro&immutable=1"),))
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
