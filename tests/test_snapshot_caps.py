"""Snapshots that respect the disk: at most MIGRATE_SNAPSHOTS_KEEP of a database's snapshots
and MIGRATE_SNAPSHOTS_MAX_MB of them together, a free-space check that counts what rotation
will remove, and a backups/ folder that git ignores."""
import os
import subprocess
from pathlib import Path

import pytest
from conftest import CLIS, file_hash

from safe_migrate.errors import MigrationError
from safe_migrate.settings import MEGABYTE, Settings
from safe_migrate.snapshots import GITIGNORE, Held, rotated_out


@pytest.fixture(params=CLIS)
def cli(request):
    """Every guarantee here holds through both CLIs: the Manager and `flask db`."""
    return request.param


def snapshots(project):
    return sorted((project.path / "backups").glob("data.db.*.db"))


def saved(output):
    return [Path(line.rpartition(" saved to ")[2]) for line in output.splitlines()
            if line.startswith("Snapshot of ")]


@pytest.fixture
def populated(sqlite_project):
    """The project at head with rows, so that each snapshot is some 300 KB; taken down a
    revision and up again without snapshots, so that its file keeps its size from now on
    (SQLite reuses the pages the downgrade's table copy added)."""
    assert sqlite_project.db("upgrade")[0] == 0
    sqlite_project.populate()
    for command in ("downgrade", "upgrade"):
        assert sqlite_project.db(command, "-x", "backup=off")[0] == 0
    return sqlite_project


def run(project, command, env=None):
    """One migration run (a downgrade or an upgrade of one revision) that succeeds."""
    code, output = project.db(command, *(["-x", "yes"] if command == "downgrade" else []),
                              env=env or {})
    assert code == 0, output
    return output


# --- rotation's choice (pure) ---------------------------------------------------------------


def held(*sizes):
    """Snapshots of these sizes, oldest first."""
    return [Held(f"20250101T0000000000{i:02d}Z", size, Path(f"s{i}")) for i, size in
            enumerate(sizes)]


def test_rotation_keeps_the_newest_by_count():
    snaps = held(1, 1, 1, 1, 1)
    assert sorted(rotated_out(snaps, 3, None)) == snaps[:2]
    assert rotated_out(snaps, 5, None) == [] and rotated_out([], 1, None) == []


def test_rotation_keeps_the_newest_that_fit_in_the_size_cap():
    snaps = held(10, 50, 30, 40)
    assert sorted(rotated_out(snaps, 10, 70)) == snaps[:2]   # 40 + 30 fit, 50 does not
    assert sorted(rotated_out(snaps, 10, 100)) == snaps[:2]  # once one does not fit, older go
    assert sorted(rotated_out(snaps, 1, 1000)) == snaps[:3]  # the stricter cap wins


def test_rotation_always_keeps_the_newest():
    snaps = held(10, 500)
    assert rotated_out(snaps, 1, 100) == [snaps[0]]


def test_rotation_order_is_the_time_in_the_names_not_the_order_given():
    snaps = held(1, 1, 1)
    assert rotated_out(list(reversed(snaps)), 1, None) == [snaps[1], snaps[0]]


# --- the settings ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, value", [
    ("MIGRATE_SNAPSHOTS_KEEP", "0"), ("MIGRATE_SNAPSHOTS_KEEP", "1001"),
    ("MIGRATE_SNAPSHOTS_KEEP", "-1"), ("MIGRATE_SNAPSHOTS_KEEP", "ten"),
    ("MIGRATE_SNAPSHOTS_MAX_MB", "-1"), ("MIGRATE_SNAPSHOTS_MAX_MB", "nan"),
    ("MIGRATE_SNAPSHOTS_MAX_MB", "0.001"), ("MIGRATE_SNAPSHOTS_MAX_MB", "1e10"),
    ("MIGRATE_SNAPSHOTS_MAX_MB", "lots")])
def test_a_setting_out_of_range_is_refused_naming_it(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(MigrationError, match=f"^{name} must be a "):
        Settings()


def test_the_settings_defaults_and_values(monkeypatch):
    settings = Settings()
    assert (settings.snapshots_kept, settings.snapshots_max_bytes) == (10, None)
    monkeypatch.setenv("MIGRATE_SNAPSHOTS_KEEP", "3")
    monkeypatch.setenv("MIGRATE_SNAPSHOTS_MAX_MB", "1.5")
    settings = Settings()
    assert (settings.snapshots_kept, settings.snapshots_max_bytes) == (3, 3 * MEGABYTE // 2)
    monkeypatch.setenv("MIGRATE_SNAPSHOTS_MAX_MB", "0")
    assert Settings().snapshots_max_bytes is None


def test_a_bad_setting_is_one_line_through_the_cli(populated):
    code, output = populated.db("downgrade", env={"MIGRATE_SNAPSHOTS_KEEP": "0"})
    assert code == 1
    assert output == ("Error: MIGRATE_SNAPSHOTS_KEEP must be a whole number from 1 to 1000, "
                      "not '0'\n")


# --- through the CLIs -------------------------------------------------------------------------


def test_backups_stay_under_the_size_cap_across_twenty_runs(populated):
    database = populated.path / "data.db"
    cap = round(2.5 * database.stat().st_size / MEGABYTE, 3)  # room for two, not three
    cap_bytes = round(cap * MEGABYTE)
    env = {"MIGRATE_SNAPSHOTS_MAX_MB": str(cap)}
    most = 0
    for number in range(20):
        output = run(populated, "downgrade" if number % 2 == 0 else "upgrade", env)
        [taken] = saved(output)
        kept = snapshots(populated)
        assert taken in kept
        assert sum(p.stat().st_size for p in kept) <= cap_bytes, (number, kept)
        most = max(most, len(kept))
    assert most == 2  # the cap, not the count (10), decided


def test_a_snapshot_larger_than_the_cap_is_refused_and_nothing_changes(populated):
    before, database = populated.state(), populated.path / "data.db"
    code, output = populated.db("downgrade", "-x", "yes",
                                env={"MIGRATE_SNAPSHOTS_MAX_MB": "0.01"})
    assert code == 1
    assert output == (f"Error: a snapshot of data.db ({database.stat().st_size} bytes) is larger "
                      f"than MIGRATE_SNAPSHOTS_MAX_MB ({round(0.01 * MEGABYTE)} bytes); nothing "
                      "changed. Raise it, or skip the snapshot with -x backup=off\n")
    assert populated.state() == before and snapshots(populated) == []


def test_the_count_cap_keeps_the_newest(populated):
    printed = []
    for number in range(6):
        printed += saved(run(populated, ("downgrade", "upgrade")[number % 2],
                             {"MIGRATE_SNAPSHOTS_KEEP": "3"}))
    assert len(printed) == 6 and snapshots(populated) == sorted(printed[-3:])


def test_backups_has_a_gitignore_that_git_obeys(populated):
    subprocess.run(["git", "init", "-q"], cwd=populated.path, check=True)
    run(populated, "downgrade")
    backups = populated.path / "backups"

    assert (backups / ".gitignore").read_text() == GITIGNORE
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"],
                            cwd=populated.path, check=True, capture_output=True, text=True)
    listed = [line[3:] for line in status.stdout.splitlines()]
    assert "data.db" in listed and not [p for p in listed if p.startswith("backups")], listed


def test_an_edited_gitignore_is_left_as_it_is(populated):
    backups = populated.path / "backups"
    backups.mkdir()
    (backups / ".gitignore").write_text("*.db\n")
    run(populated, "downgrade")
    assert (backups / ".gitignore").read_text() == "*.db\n"


@pytest.fixture
def small_disk(populated):
    """backups/ on a tmpfs with room for one snapshot and a half, not two."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    backups = populated.path / "backups"
    backups.mkdir()
    size = (populated.path / "data.db").stat().st_size
    room = (size * 3 // 2 // 4096 + 1) * 4096
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={room}", "tmpfs", backups], check=True)
    try:
        yield populated
    finally:
        subprocess.run(["umount", backups], check=True)


def test_a_full_disk_with_old_snapshots_makes_room_for_the_new_one(small_disk):
    project = small_disk
    keep_one = {"MIGRATE_SNAPSHOTS_KEEP": "1"}
    [first] = saved(run(project, "downgrade", keep_one))

    output = run(project, "upgrade", keep_one)

    assert "Removed 1 older snapshot(s) of data.db to make room" in output, output
    [second] = saved(output)
    assert snapshots(project) == [second] and not first.exists()


def test_a_full_disk_whose_snapshots_rotation_keeps_refuses_and_changes_nothing(small_disk):
    project = small_disk
    [first] = saved(run(project, "downgrade"))  # the default keeps ten: none may go
    database = project.path / "data.db"
    before, hashed = project.state(), file_hash(first)

    code, output = project.db("upgrade")

    assert code == 1, output
    assert output.startswith(f"Error: no room for a snapshot of data.db "
                             f"({database.stat().st_size} bytes) in "), output
    assert ", 0 more once rotation removes older snapshots); nothing changed." in output, output
    assert len(output.splitlines()) == 1, output
    assert project.state() == before and snapshots(project) == [first]
    assert file_hash(first) == hashed
