"""Nothing silently lost around the database: snapshots you can trust, restores that check
what they put back, one lock per real file, no file left by a failed first run."""
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest
import sqlalchemy as sa
from conftest import CLIS, Project, copy_project, file_hash


@pytest.fixture(params=CLIS)
def cli(request):
    return request.param


def snapshots(project):
    return sorted((project.path / "backups").glob("data.*-*.*Z.db"))


def test_snapshots_are_no_wider_than_the_database(sqlite_project):
    assert sqlite_project.db("upgrade")[0] == 0
    database = sqlite_project.path / "data.db"
    database.chmod(0o600)

    assert sqlite_project.db("downgrade")[0] == 0

    [snapshot] = snapshots(sqlite_project)
    assert snapshot.stat().st_mode & 0o777 == 0o600


def test_a_full_disk_refuses_the_snapshot_and_changes_nothing(sqlite_project):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    assert sqlite_project.db("upgrade")[0] == 0
    sqlite_project.populate()
    database = sqlite_project.path / "data.db"
    before = file_hash(database)
    backups = sqlite_project.path / "backups"
    backups.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", backups], check=True)
    try:
        code, output = sqlite_project.db("downgrade")
        assert code == 1
        size = database.stat().st_size
        assert output.startswith(f"Error: no room for a snapshot of data.db ({size} bytes) in "), output
        assert len(output.splitlines()) == 1, output
        assert list(backups.iterdir()) == []
    finally:
        subprocess.run(["umount", backups], check=True)
    assert file_hash(database) == before


@pytest.fixture
def at_head_with_a_snapshot(sqlite_project):
    """The project at head, populated, with one real snapshot in backups/."""
    assert sqlite_project.db("upgrade", sqlite_project.revisions()[1])[0] == 0
    sqlite_project.populate()
    assert sqlite_project.db("upgrade")[0] == 0
    return sqlite_project


def foreign_database(path):
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        conn.execute("INSERT INTO alembic_version VALUES ('0123456789ab')")
    return "is at revision 0123456789ab, which migrations/ does not know"


def empty_file(path):
    path.write_bytes(b"")
    return "is empty, not a snapshot"


def corrupt_file(path, project):
    data = bytearray((project.path / "data.db").read_bytes())
    data[100:4096] = os.urandom(3996)  # the schema page, overwritten
    path.write_bytes(bytes(data))
    return "is not a whole SQLite database"


def partial_file(path, project):
    [snapshot] = snapshots(project)
    data = snapshot.read_bytes()
    path.write_bytes(data[:len(data) // 2])  # what a kill or a full disk leaves
    return "is not a whole SQLite database"


def another_databases_snapshot(path, project):
    """A snapshot by this tool of another database of the same project, at a known revision."""
    other = Project(copy_project(project.path.parent / "other"), cli=project.cli)
    assert other.db("upgrade")[0] == 0
    shutil.copy(other.path / "data.db", path)
    return f"was not taken from {project.path / 'data.db'}"


BAD_SNAPSHOTS = {
    "empty": lambda path, project: empty_file(path),
    "corrupt": corrupt_file,
    "partial": partial_file,
    "foreign": lambda path, project: foreign_database(path),
    "another database's": another_databases_snapshot,
    "the live file": None,
}


@pytest.mark.parametrize("case", BAD_SNAPSHOTS)
def test_restore_refuses_what_is_not_a_snapshot_of_this_database(at_head_with_a_snapshot, case):
    project = at_head_with_a_snapshot
    database = project.path / "data.db"
    if case == "the live file":
        candidate, expected = database, "is the database itself"
    else:
        candidate = project.path / "backups" / "data.candidate.db"
        expected = BAD_SNAPSHOTS[case](candidate, project)
    before, kept = file_hash(database), snapshots(project)

    code, output = project.db("restore", candidate)

    assert code == 1
    assert len(output.splitlines()) == 1 and output.startswith("Error: "), output
    assert expected in output, output
    assert file_hash(database) == before
    assert snapshots(project) == kept


def test_restore_refuses_a_read_only_url(at_head_with_a_snapshot):
    project = at_head_with_a_snapshot
    [snapshot] = snapshots(project)
    before = file_hash(project.path / "data.db")

    code, output = project.db("restore", snapshot,
                              env={"DATABASE_URL": "sqlite:///file:data.db?mode=ro&uri=true"})

    assert code == 1
    assert output == (f"Error: the database URL opens {project.path / 'data.db'} read-only; "
                      "nothing changed\n")
    assert file_hash(project.path / "data.db") == before


def test_users_own_files_in_backups_survive_rotation(sqlite_project):
    backups = sqlite_project.path / "backups"
    backups.mkdir()
    theirs = {name: f"{name} content" for name in
              ("data.2024-01-01.db", "data.test.db", "data.x-y.db", "other.db")}
    for name, content in theirs.items():
        (backups / name).write_text(content)
    assert sqlite_project.db("upgrade")[0] == 0

    for _ in range(6):
        assert sqlite_project.db("downgrade")[0] == 0
        assert sqlite_project.db("upgrade")[0] == 0

    assert len(snapshots(sqlite_project)) == 10
    assert {name: (backups / name).read_text() for name in theirs} == theirs


SLOW_REVISION = """
    def upgrade():
        op.create_table("slow_runs", sa.Column("id", sa.Integer, primary_key=True))
        op.execute("INSERT INTO slow_runs (id) VALUES (1)")
        time.sleep(2)


    def downgrade():
        op.drop_table("slow_runs")
"""


def start_upgrade(project, env):
    return subprocess.Popen(
        [str(a) for a in project.db_argv("upgrade", "-x", "backup=off")], cwd=project.path,
        env={**project.env, "FLASK_APP": "migrate_example.py", **env},
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_symlink_and_the_real_path_share_one_lock(sqlite_project):
    assert sqlite_project.db("upgrade")[0] == 0
    link = sqlite_project.path / "link.db"
    link.symlink_to(sqlite_project.path / "data.db")
    sqlite_project.add_revision("slow0001", SLOW_REVISION)

    runs = [start_upgrade(sqlite_project, {"DATABASE_URL": f"sqlite:///{path}"})
            for path in (link, sqlite_project.path / "data.db")]
    outputs = [run.communicate(timeout=120)[0] for run in runs]

    assert [run.returncode for run in runs] == [0, 0], outputs
    assert sum(o.count("-> slow0001") for o in outputs) == 1, outputs
    assert sqlite_project.query("SELECT count(*) FROM slow_runs") == [(1,)]


@pytest.mark.postgresql
def test_a_server_that_ends_idle_sessions_does_not_end_the_lock(make_project, new_pg_database,
                                                                 pg_server):
    url = new_pg_database()
    name = url.rsplit("/", 1)[1]
    pg_server.admin(f"ALTER DATABASE {name} SET idle_session_timeout = '2s'")
    project = make_project(database_url=url)
    assert project.db("upgrade")[0] == 0
    project.add_revision("slow0001", SLOW_REVISION.replace("time.sleep(2)",
                                                           'op.execute("SELECT pg_sleep(4)")'))

    runs = [start_upgrade(project, {}) for _ in range(2)]
    outputs = [run.communicate(timeout=120)[0] for run in runs]

    assert [run.returncode for run in runs] == [0, 0], outputs
    assert sum(o.count("-> slow0001") for o in outputs) == 1, outputs
    assert not any("WARNING" in o for o in outputs), outputs
    assert project.query("SELECT count(*) FROM slow_runs") == [(1,)]


def test_a_failed_first_run_leaves_no_database_file(sqlite_project):
    first = next((sqlite_project.path / "migrations" / "versions").glob(
        f"{sqlite_project.revisions()[0]}_*.py"))
    first.write_text(first.read_text() + textwrap.dedent("""

        _upgrade = upgrade


        def upgrade():
            _upgrade()
            raise RuntimeError("injected failure")
    """))
    files = sorted(sqlite_project.path.glob("*.*"))  # Python's __pycache__ aside

    code, output = sqlite_project.db("upgrade")

    assert code == 1 and "injected failure" in output, output
    assert sorted(sqlite_project.path.glob("*.*")) == files
    code, output = sqlite_project.db("current")
    assert code == 1 and "no database at" in output


FIRM = '''
    def upgrade():
        op.execute("""
            CREATE TABLE firm (
                id INTEGER PRIMARY KEY{autoincrement},
                name VARCHAR NOT NULL{collate},
                size INTEGER{check},
                parent_id INTEGER REFERENCES company (cid){on_delete}
            )""")
        op.execute("CREATE INDEX ix_firm_lower_name ON firm (lower(name))")
        op.execute("CREATE INDEX ix_firm_big ON firm (size) WHERE size > 100")
        op.execute("CREATE TABLE firm_log (firm_id INTEGER)")
        op.execute("CREATE TRIGGER firm_logged AFTER INSERT ON firm "
                   "BEGIN INSERT INTO firm_log VALUES (NEW.id); END")
        op.execute("INSERT INTO firm (id, name, size) VALUES (1, 'a', 5), (2, 'b', 500), (3, 'c', 7)")
        op.execute("DELETE FROM firm WHERE id = 3")


    def downgrade():
        op.execute("DROP TABLE firm_log")
        op.execute("DROP TABLE firm")
'''

COPY_FIRM = '''
    def upgrade():
        with op.batch_alter_table("firm", recreate="always") as batch_op:
            batch_op.add_column(sa.Column("note", sa.String))


    def downgrade():
        with op.batch_alter_table("firm", recreate="always") as batch_op:
            batch_op.drop_column("note")
'''

PROPERTIES = {"autoincrement": " AUTOINCREMENT", "collate": " COLLATE NOCASE",
              "check": " CHECK (size >= 0)", "on_delete": " ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED"}


def firm_schema(project):
    return sorted(project.query("SELECT type, name FROM sqlite_master WHERE tbl_name LIKE 'firm%'"))


def test_a_table_copy_keeps_triggers_and_expression_indexes(sqlite_project):
    project = sqlite_project
    assert project.db("upgrade")[0] == 0
    project.add_revision("firm0001", FIRM.format(**dict.fromkeys(PROPERTIES, "")))
    project.add_revision("copy0001", COPY_FIRM)
    assert project.db("upgrade", "firm0001")[0] == 0
    objects = firm_schema(project)
    assert ("trigger", "firm_logged") in objects and ("index", "ix_firm_lower_name") in objects

    for step in (["upgrade", "copy0001"], ["downgrade", "firm0001"]):
        code, output = project.db(*step, "-x", "backup=off")
        assert code == 0, output
        assert firm_schema(project) == objects
    project.execute("INSERT INTO firm (name, size) VALUES ('d', 1)")  # the trigger still fires
    assert project.query("SELECT count(*) FROM firm_log") == [(4,)]


def test_a_table_copy_that_would_lose_properties_is_refused(sqlite_project):
    project = sqlite_project
    assert project.db("upgrade")[0] == 0
    project.add_revision("firm0001", FIRM.format(**PROPERTIES))
    copy = project.add_revision("copy0001", COPY_FIRM)
    assert project.db("upgrade", "firm0001")[0] == 0
    database = project.path / "data.db"
    before = file_hash(database)

    code, output = project.db("upgrade", "-x", "backup=off")

    assert code == 1
    assert output.splitlines()[-1] == (
        f"Error: {copy}: its table copies would lose AUTOINCREMENT of firm, COLLATE NOCASE of "
        "firm.name, FOREIGN KEY (parent_id) REFERENCES company ON UPDATE NO ACTION ON DELETE "
        "CASCADE of firm, DEFERRABLE INITIALLY DEFERRED of 1 foreign key(s) of firm (the copy "
        "defers 0), CHECK (size >= 0) of firm; revision rolled back. To lose them, add "
        "-x lose=firm"), output
    assert file_hash(database) == before

    code, output = project.db("upgrade", "-x", "backup=off", "-x", "lose=firm")
    assert code == 0, output
    assert ("trigger", "firm_logged") in firm_schema(project)


@pytest.mark.postgresql
def test_the_first_error_is_the_one_shown(make_project, new_pg_database, pg_server):
    url = new_pg_database()
    role = "u_" + url.rsplit("/", 1)[1]
    pg_server.admin(f"CREATE ROLE {role} LOGIN PASSWORD 'role-secret'")
    # Since PostgreSQL 15 only the database's owner may create tables in schema public.
    as_role = sa.engine.make_url(url).set(username=role, password="role-secret")
    project = make_project(database_url=as_role.render_as_string(hide_password=False))
    code, output = project.db("upgrade")

    assert code == 1
    assert output.splitlines()[-1].startswith("Error: "), output
    assert "permission denied for schema public" in output, output
    assert "role-secret" not in output


def test_a_full_disk_during_a_table_copy_says_disk_full(make_project, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", disk], check=True)
    try:
        project = make_project(database_url=f"sqlite:///{disk / 'data.db'}")
        # Commands in their own process: umount needs this one to hold no file of the disk
        # (Flask-SQLAlchemy 3 makes the app's engine at import, pooled).
        assert project.db("upgrade", project.revisions()[1], subprocess=True)[0] == 0
        project.populate(rows=5000)
        database = disk / "data.db"
        before = file_hash(database)
        # Leave less room than a copy of employee needs.
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "filler").write_bytes(b"\0" * max(0, free - 32 * 1024))

        code, output = project.db("upgrade", "-x", "backup=off", subprocess=True)

        assert code == 1
        assert output.splitlines()[-1].startswith("Error: "), output
        assert "disk full" in output.splitlines()[-1], output
        assert "_alembic_tmp" not in output, output
        assert file_hash(database) == before
    finally:
        subprocess.run(["umount", disk], check=True)


HOLDER = """
import fcntl, sqlite3, sys, time
lock = open(sys.argv[1] + ".migration-lock", "a+")
fcntl.flock(lock, fcntl.LOCK_EX)
reader = sqlite3.connect(sys.argv[1], isolation_level=None)
reader.execute("BEGIN")
reader.execute("SELECT count(*) FROM employee").fetchone()
print("holding", flush=True)
time.sleep(float(sys.argv[2]))  # another migration, running this long
fcntl.flock(lock, fcntl.LOCK_UN)
time.sleep(3600)  # a reader that never ends its transaction
"""


def test_all_waiting_together_is_bounded_by_the_lock_timeout(sqlite_project):
    project = sqlite_project
    assert project.db("upgrade", project.revisions()[1])[0] == 0
    before = file_hash(project.path / "data.db")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, project.path / "data.db", "10"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "holding\n"
        start = time.monotonic()
        code, output = project.db("upgrade", "-x", "backup=off",
                                  env={"MIGRATE_LOCK_TIMEOUT": "12"})
        elapsed = time.monotonic() - start
    finally:
        holder.kill()
        holder.wait()

    assert code == 1
    assert "gave up waiting after MIGRATE_LOCK_TIMEOUT" in output.splitlines()[-1], output
    # 10 s for the migration lock, then the reader: 12 s in all (plus start-up), not 10 + 12.
    assert elapsed < 18, elapsed
    assert file_hash(project.path / "data.db") == before


def test_no_lock_file_is_left_behind(sqlite_project):
    assert sqlite_project.db("upgrade")[0] == 0
    assert sqlite_project.db("downgrade", "-x", "backup=off")[0] == 0
    assert list(sqlite_project.path.glob("*.migration-lock")) == []


def grow(database, rows):
    with sqlite3.connect(database) as conn:
        conn.execute(
            "INSERT INTO employee (name, email) WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL "
            f"SELECT i + 1 FROM n WHERE i < {rows}) SELECT 'employee ' || i, 'e' || i || "
            "'@example.com' || hex(randomblob(40)) FROM n")


def kill_when(proc, backups, written):
    """kill -9 the run once a partial snapshot in backups/ holds `written` bytes."""
    while proc.poll() is None:
        partials = list(backups.glob(".*.partial")) if backups.exists() else []
        if any(p.stat().st_size >= written for p in partials if p.exists()):
            proc.kill()
            break
    proc.wait()
    return partials


@pytest.mark.parametrize("written", [0, 2**20], ids=["as it starts", "after 1 MB"])
def test_a_killed_snapshot_leaves_nothing_behind(sqlite_project, written):
    project = sqlite_project
    assert project.db("upgrade", project.revisions()[1])[0] == 0
    database, backups = project.path / "data.db", project.path / "backups"
    grow(database, 300_000)
    before = file_hash(database)
    run = subprocess.Popen([str(a) for a in project.db_argv("upgrade")], cwd=project.path,
                           env={**project.env, "FLASK_APP": "migrate_example.py"},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    assert kill_when(run, backups, written), "the run ended before its snapshot was seen"
    assert run.returncode == -9
    assert file_hash(database) == before
    assert snapshots(project) == []

    code, output = project.db("upgrade")  # the next run clears what the killed one left
    assert code == 0, output
    assert sorted(p.name for p in backups.iterdir()) == [".gitignore", snapshots(project)[0].name]
    assert list(project.path.glob("*.migration-lock")) == []


def test_restore_of_another_databases_snapshot_needs_x_foreign(at_head_with_a_snapshot):
    project = at_head_with_a_snapshot
    candidate = project.path / "backups" / "data.candidate.db"
    another_databases_snapshot(candidate, project)

    code, output = project.db("restore", candidate, "-x", "foreign", "-x", "yes")

    assert code == 0, output
    assert project.query("SELECT count(*) FROM employee") == [(0,)]


def test_restore_says_which_rows_it_would_lose(at_head_with_a_snapshot):
    project = at_head_with_a_snapshot
    [snapshot] = snapshots(project)
    project.execute("INSERT INTO employee (name, age) VALUES ('new 1', 30), ('new 2', 31)")
    project.execute("UPDATE company SET cname = 'renamed' WHERE cid = 1")
    before = file_hash(project.path / "data.db")

    code, output = project.db("restore", snapshot)

    assert code == 1
    assert output == (f"Error: data.db has rows that {snapshot.name} lacks, which a restore "
                      "loses: company (1 rows), employee (2 rows); nothing changed. To go "
                      "ahead, add -x yes\n")
    assert file_hash(project.path / "data.db") == before
    assert snapshots(project) == [snapshot]

    code, output = project.db("restore", snapshot, "-x", "yes")
    assert code == 0, output
    assert project.query("SELECT count(*) FROM employee") == [(1000,)]


@pytest.mark.parametrize("answer", ["y", "n"])
def test_restore_asks_on_a_terminal(at_head_with_a_snapshot, answer):
    project = at_head_with_a_snapshot
    [snapshot] = snapshots(project)
    project.execute("DELETE FROM company WHERE cid > 10")
    project.execute("INSERT INTO company (cid, cname, clocation) VALUES (5000, 'new', 'x')")

    code, output = project.db_on_terminal(["restore", snapshot], answer)

    assert "company (1 rows)" in output and "Restore? [y/N]" in output, output
    assert code == (0 if answer == "y" else 1), output
    expected = 1000 if answer == "y" else 11
    assert project.query("SELECT count(*) FROM company") == [(expected,)]


def test_restore_waits_for_a_reader_no_longer_than_the_lock_timeout(at_head_with_a_snapshot):
    project = at_head_with_a_snapshot
    [snapshot] = snapshots(project)
    database = project.path / "data.db"
    before = file_hash(database)
    reader = sqlite3.connect(database, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM employee").fetchone()
    try:
        start = time.monotonic()
        code, output = project.db("restore", snapshot, "-x", "yes",
                                  env={"MIGRATE_LOCK_TIMEOUT": "2"})
        elapsed = time.monotonic() - start
    finally:
        reader.close()

    assert code == 1
    assert "gave up waiting after MIGRATE_LOCK_TIMEOUT" in output, output
    assert elapsed < 10, elapsed
    assert file_hash(database) == before
    assert snapshots(project) == [snapshot]


def test_a_database_from_before_identities_gets_one_before_its_snapshot(sqlite_project):
    project = sqlite_project
    assert project.db("upgrade")[0] == 0
    project.execute("DROP TABLE migration_database")  # as an earlier version left it
    assert project.db("downgrade")[0] == 0
    [snapshot] = snapshots(project)

    code, output = project.db("restore", snapshot)

    assert code == 0, output
    assert project.version() == project.revisions()[-1]
