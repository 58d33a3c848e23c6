"""Snapshots you can trust: each database's own (by its full file name), no side files in
backups/, the database's permission bits; and a restore that works where it is needed most,
onto a damaged or a missing database."""
import os
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from conftest import CLIS, file_hash

from safe_migrate.snapshots import is_named_for, open_snapshot, rotate_snapshots


@pytest.fixture(params=CLIS)
def cli(request):
    """Every guarantee here holds through both CLIs: the Manager and `flask db`."""
    return request.param


def saved(output):
    """The snapshots a command says it saved."""
    return [Path(line.rpartition(" saved to ")[2]) for line in output.splitlines()
            if line.startswith("Snapshot of ")]


@pytest.fixture
def snapshotted(sqlite_project):
    """The project at head, populated, with one snapshot of it (taken by a downgrade), and
    the database as that snapshot holds it."""
    project = sqlite_project
    assert project.db("upgrade")[0] == 0
    project.populate(100)
    before = project.state()
    code, output = project.db("downgrade", "-x", "yes")
    assert code == 0, output
    [snapshot] = saved(output)
    return project, snapshot, before


def damage(path):
    """What a bad disk or a stray write leaves: the first 100 bytes (SQLite's header)
    overwritten."""
    with open(path, "r+b") as file:
        file.write(b"\xa5" * 100)


def test_rotation_keeps_the_snapshots_of_another_file_with_the_same_stem(sqlite_project):
    project = sqlite_project
    assert project.db("upgrade")[0] == 0
    code, output = project.db("downgrade")
    theirs = {p: file_hash(p) for p in saved(output)}
    assert code == 0 and len(theirs) == 1, output
    other = {"DATABASE_URL": f"sqlite:///{project.path / 'data.sqlite'}"}

    assert project.db("upgrade", env=other)[0] == 0
    printed = []
    for _ in range(6):
        for command in ("downgrade", "upgrade"):
            code, output = project.db(command, env=other)
            assert code == 0, output
            printed += saved(output)

    assert {p: file_hash(p) for p in theirs if p.exists()} == theirs
    assert len(printed) == 12 and [p for p in printed if p.exists()] == printed[-10:]
    assert all(p.name.startswith("data.sqlite.") for p in printed)


def test_rotation_leaves_snapshots_named_the_old_way(tmp_path):
    """Names from before the full file name (`<stem>.<from>-<to>.<time>.db`) are restorable
    and never rotated: data.db's and data.sqlite's would look alike."""
    backups = tmp_path / "backups"
    backups.mkdir()
    database = tmp_path / "data.db"
    database.write_bytes(b"")
    old = backups / "data.aaa-bbb.20240101T000000000000Z.db"
    new = [backups / f"data.db.aaa-bbb.2025010{i}T000000000000Z.db" for i in range(1, 4)]
    sibling = backups / "data.sqlite.aaa-bbb.20240101T000000000000Z.db"
    for path in (old, sibling, *new):
        path.write_bytes(b"")

    rotate_snapshots(database, 1)

    assert sorted(backups.iterdir()) == sorted([old, sibling, new[-1]])
    assert is_named_for(old, database) and is_named_for(new[0], database)
    assert not is_named_for(sibling, database)
    assert not is_named_for(new[0], tmp_path / "data.sqlite")


@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["umask-022", "umask-077"])
def test_a_wal_database_leaves_no_side_files_and_its_mode_in_backups(sqlite_project, umask):
    project = sqlite_project
    first = project.revisions()[0]
    assert project.db("upgrade", first)[0] == 0
    database = project.path / "data.db"
    with closing(sqlite3.connect(database)) as conn:
        assert conn.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
    database.chmod(0o640)
    project.populate(100)
    before = project.state()
    old_umask = os.umask(umask)
    try:
        code, output = project.db("upgrade")
        assert code == 0, output
        [snapshot] = saved(output)
        code, output = project.db("restore", snapshot, "-x", "yes")
        assert code == 0, output
        [undo] = saved(output)
    finally:
        os.umask(old_umask)

    assert project.state() == before
    backups = project.path / "backups"
    # no -wal, -shm, -journal; the .gitignore holds no data
    assert sorted(backups.iterdir()) == sorted([snapshot, undo, backups / ".gitignore"])
    assert {p.stat().st_mode & 0o777 for p in (snapshot, undo)} == {0o640}
    for kept in (snapshot, undo):  # in rollback mode, whatever the database's
        copy = project.path.parent / "copy.db"
        shutil.copy(kept, copy)
        with closing(sqlite3.connect(copy)) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    with closing(sqlite3.connect(database)) as conn:  # the database keeps its own
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_restore_over_a_damaged_database_keeps_it_aside(snapshotted):
    project, snapshot, before = snapshotted
    database = project.path / "data.db"
    damage(database)
    damaged = file_hash(database)

    code, output = project.db("restore", snapshot)  # not without a yes
    assert code == 1
    assert output == (f"Error: {database} cannot be read (file is not a database); a restore "
                      f"puts {snapshot.name} in its place; nothing changed. To go ahead, add "
                      "-x yes\n")
    assert file_hash(database) == damaged

    code, output = project.db("restore", snapshot, "-x", "yes")

    assert code == 0, output
    assert project.state() == before
    [kept] = (project.path / "backups").glob("data.db.corrupt.*Z")
    assert file_hash(kept) == damaged
    assert f"Kept the unreadable data.db as {kept}" in output
    assert saved(output) == []


@pytest.mark.parametrize("how", ["-x yes", "y", "n"])
def test_restore_onto_a_deleted_database(snapshotted, how):
    project, snapshot, before = snapshotted
    database = project.path / "data.db"
    database.unlink()

    if how == "-x yes":
        code, output = project.db("restore", snapshot, "-x", "yes")
    else:
        code, output = project.db_on_terminal(["restore", snapshot], how)
        assert (f"no database at {database} (check DATABASE_URL); a restore puts "
                f"{snapshot.name} in its place. Restore? [y/N]") in output, output

    if how == "n":
        assert code == 1, output
        assert not database.exists()
        return
    assert code == 0, output
    assert project.state() == before
    assert database.stat().st_mode & 0o777 == snapshot.stat().st_mode & 0o777


def files(project):
    """The files of the project's folder and of its backups/, with their hashes."""
    return {p.name: file_hash(p) for folder in (project.path, project.path / "backups")
            for p in folder.iterdir() if p.is_file()}


def bad_snapshot(snapshot, case):
    """Spoil the snapshot; return its path and what restore says of it."""
    if case == "partial":
        data = snapshot.read_bytes()
        snapshot.write_bytes(data[:len(data) // 2])
        return snapshot, "is not a whole SQLite database"
    if case == "damaged":
        damage(snapshot)
        return snapshot, "is not a whole SQLite database"
    if case == "another file's name":  # data.sqlite's, by its name
        other = snapshot.with_name("data.sqlite." + snapshot.name.removeprefix("data.db."))
        snapshot.rename(other)
        return other, "is not named as a snapshot of data.db"
    with closing(sqlite3.connect(snapshot)) as conn:  # a copy of another database
        conn.execute("DROP TABLE migration_database")
        conn.commit()
    return snapshot, "is not named as a snapshot of data.db or has no migration_database identity"


@pytest.mark.parametrize("case", ["partial", "damaged", "without identity", "another file's name"])
@pytest.mark.parametrize("live", ["damaged", "missing"])
def test_a_bad_snapshot_is_refused_and_the_file_left_as_it_is(snapshotted, live, case):
    project, snapshot, _ = snapshotted
    database = project.path / "data.db"
    if live == "damaged":
        damage(database)
    else:
        database.unlink()
    snapshot, expected = bad_snapshot(snapshot, case)
    before = files(project)

    code, output = project.db("restore", snapshot, "-x", "yes")

    assert code == 1
    assert output.startswith("Error: ") and len(output.splitlines()) == 1, output
    assert expected in output, output
    assert files(project) == before


def test_a_stale_wal_of_a_deleted_database_is_kept_aside_not_replayed(snapshotted):
    """A -wal left by a crash belongs to the file that is gone: SQLite would replay it onto
    whatever database next has that name."""
    project, snapshot, before = snapshotted
    database = project.path / "data.db"
    subprocess.run([sys.executable, "-c", (
        "import os, sqlite3, sys\n"
        "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "conn.execute('PRAGMA journal_mode=WAL')\n"
        "conn.execute('PRAGMA wal_autocheckpoint=0')\n"
        "conn.execute('DELETE FROM employee')\n"
        "os._exit(0)\n"), database], check=True)  # killed: its -wal stays
    wal = database.with_name("data.db-wal")
    assert wal.stat().st_size > 0
    database.unlink()
    stale = file_hash(wal)

    code, output = project.db("restore", snapshot, "-x", "yes")

    assert code == 0, output
    assert project.state() == before
    [kept] = (project.path / "backups").glob("data.db.missing.*Z-wal")
    assert file_hash(kept) == stale
    assert not database.with_name("data.db-shm").exists()


def test_a_damaged_database_that_a_process_has_open_is_not_replaced(snapshotted):
    project, snapshot, _ = snapshotted
    database = project.path / "data.db"
    with closing(sqlite3.connect(database)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
    app = sqlite3.connect(database)  # an app's idle WAL connection holds the -shm
    try:
        app.execute("SELECT count(*) FROM employee").fetchone()
        damage(database)
        damaged = file_hash(database)

        # Another process: POSIX locks do not conflict within this one, which holds `app`.
        code, output = project.db("restore", snapshot, "-x", "yes",
                                  env={"MIGRATE_LOCK_TIMEOUT": "1"}, subprocess=True)

        assert code == 1
        assert output == (f"Error: another process has {database} open (the app?); gave up "
                          "waiting after MIGRATE_LOCK_TIMEOUT, nothing changed. Stop it and "
                          "retry\n")
        assert file_hash(database) == damaged
    finally:
        app.close()


def test_snapshot_names_with_uri_characters_open(tmp_path):
    path = tmp_path / "a?b#c%d" / "data.db"
    path.parent.mkdir()
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
    with closing(open_snapshot(path)) as conn:
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("t",)]
    assert sorted(p.name for p in path.parent.iterdir()) == ["data.db"]


def test_a_snapshot_named_and_left_in_wal_mode_by_an_earlier_version_restores(snapshotted):
    """Earlier versions named snapshots by the stem and copied the WAL flag along: opened
    immutable, such a snapshot still restores, and leaves no -wal or -shm in backups/."""
    project, snapshot, before = snapshotted
    label = snapshot.name.removeprefix("data.db.")
    old = snapshot.with_name(f"data.{label}")
    with closing(sqlite3.connect(snapshot)) as src, closing(sqlite3.connect(old)) as dst:
        src.backup(dst)
        assert dst.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
    snapshot.unlink()
    (project.path / "data.db").unlink()
    backups = sorted((project.path / "backups").iterdir())
    assert backups == [old.with_name(".gitignore"), old]

    code, output = project.db("restore", old, "-x", "yes")

    assert code == 0, output
    assert project.state() == before
    assert sorted((project.path / "backups").iterdir()) == backups
