"""A failed or concurrent migration never leaves the database half-changed."""
import os
import sqlite3
import subprocess
import textwrap

import pytest
from conftest import CLIS, file_hash, sqlalchemy_parse_error

INJECTED = "injected failure"


@pytest.fixture(params=CLIS)
def cli(request):
    """Every guarantee here holds through both CLIs: the Manager and `flask db`."""
    return request.param


def revision_file(project, revision):
    return next((project.path / "migrations" / "versions").glob(f"{revision}_*.py"))


def inject_failure(path, function):
    """Make the revision's upgrade() or downgrade() raise after all its work is done."""
    original = path.read_text()
    path.write_text(original + textwrap.dedent(f"""

        _{function} = {function}


        def {function}():
            _{function}()
            raise RuntimeError("{INJECTED}")
    """))
    return original


@pytest.mark.parametrize("step", [0, 1, 2], ids=["create-tables", "add-age", "drop-email"])
def test_failure_at_the_end_of_a_revision_rolls_it_back(project, step):
    revisions = project.revisions()
    if step:
        assert project.db("upgrade", revisions[step - 1])[0] == 0
        project.populate()
    path = revision_file(project, revisions[step])

    # Upgrade fails at its very end: nothing of it stays.
    before = project.state()
    original = inject_failure(path, "upgrade")
    code, output = project.db("upgrade", revisions[step], "-x", "backup=off")
    assert code == 1 and INJECTED in output, output
    assert project.state() == before
    assert not [t for t in project.tables() if t.startswith("_alembic_tmp")]

    # Fixed, it applies.
    path.write_text(original)
    code, output = project.db("upgrade", revisions[step], "-x", "backup=off")
    assert code == 0, output
    assert project.version() == revisions[step]
    if not step:
        project.populate()

    # Downgrade fails at its very end: nothing of it stays either.
    before = project.state()
    inject_failure(path, "downgrade")
    assert project.db("repair")[0] == 0  # the edit of an applied revision is deliberate
    before = project.state()
    code, output = project.db("downgrade", "-x", "backup=off", "-x", "yes")
    assert code == 1 and INJECTED in output, output
    assert project.state() == before
    assert not [t for t in project.tables() if t.startswith("_alembic_tmp")]


def test_failed_batch_operation_after_create_table_changes_nothing(project):
    assert project.db("upgrade")[0] == 0
    project.populate()
    before = project.state()
    body = """
        def upgrade():
            op.create_table("department", sa.Column("id", sa.Integer, primary_key=True))
            with op.batch_alter_table("employee") as batch_op:
                batch_op.add_column(sa.Column("dept_id", sa.Integer, nullable=False{default}))


        def downgrade():
            with op.batch_alter_table("employee") as batch_op:
                batch_op.drop_column("dept_id")
            op.drop_table("department")
    """
    path = project.add_revision("dept0001", body.format(default=""))

    code, output = project.db("upgrade", "-x", "backup=off")

    assert code == 1, output
    assert "Traceback" not in output
    assert project.state() == before
    assert not [t for t in project.tables() if t.startswith("_alembic_tmp")]

    path.write_text(path.read_text().replace("nullable=False", "nullable=False, server_default='0'"))
    code, output = project.db("upgrade", "-x", "backup=off")
    assert code == 0, output
    assert project.columns("employee") == ["id", "name", "age", "dept_id"]
    assert project.query("SELECT count(*) FROM employee") == [(1000,)]


SLOW_REVISION = """
    def upgrade():
        op.create_table("slow_runs", sa.Column("id", sa.Integer, primary_key=True))
        time.sleep(2)
        op.execute("INSERT INTO slow_runs (id) VALUES (1)")


    def downgrade():
        op.drop_table("slow_runs")
"""


def start_upgrade(project, env=None):
    return subprocess.Popen(
        [str(a) for a in project.db_argv("upgrade")], cwd=project.path,
        env={**project.env, "FLASK_APP": "migrate_example.py", **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def test_concurrent_upgrades_take_turns(project):
    assert project.db("upgrade")[0] == 0
    project.add_revision("slow0001", SLOW_REVISION)

    runs = [start_upgrade(project) for _ in range(4)]
    outputs = [run.communicate(timeout=120)[0] for run in runs]

    assert [run.returncode for run in runs] == [0, 0, 0, 0], outputs
    assert sum(o.count("-> slow0001") for o in outputs) == 1, outputs
    assert project.query("SELECT count(*) FROM slow_runs") == [(1,)]
    assert project.version() == "slow0001"


HOLDING_REVISION = """
    def upgrade():
        op.create_table("slow_runs", sa.Column("id", sa.Integer, primary_key=True))
        with open({started!r}, "w") as started:  # tell the test we are inside
            started.write("running")
        with open({release!r}) as release:  # and hold the lock until it says so
            release.read()
        op.execute("INSERT INTO slow_runs (id) VALUES (1)")


    def downgrade():
        op.drop_table("slow_runs")
"""


def test_a_run_that_cannot_get_the_lock_names_the_holder(project):
    assert project.db("upgrade")[0] == 0
    started, release = project.path / "started", project.path / "release"
    os.mkfifo(started)
    os.mkfifo(release)
    project.add_revision("slow0001", HOLDING_REVISION.format(started=str(started),
                                                             release=str(release)))
    holder = start_upgrade(project)
    with open(started) as inside:  # returns once the holder is inside the revision
        assert inside.read() == "running"

    code, output = project.db("upgrade", env={"MIGRATE_LOCK_TIMEOUT": "0.5"})

    with open(release, "w") as go:
        go.write("go")
    holder_output = holder.communicate(timeout=120)[0]
    assert holder.returncode == 0, holder_output
    assert code == 1
    assert "another migration" in output and f"pid {holder.pid}" in output, output
    assert "Traceback" not in output


# --- bad input: one line, non-zero exit, the database untouched ---------------------------


def database_fingerprint(project):
    """The SQLite file's bytes; on PostgreSQL, everything Project.state() sees."""
    if project.database_url.startswith("sqlite"):
        return file_hash(project.path / "data.db")
    return project.state()


def setup_syntax_error(project):
    project.add_revision("broken01", "def upgrade():\n    op.add_column('employee',\n")
    return "broken01_test.py, line"


def setup_import_error(project):
    project.add_revision("broken02", "import no_such_module\n\ndef upgrade():\n    pass\n")
    return "broken02_test.py, line 11: ModuleNotFoundError"


def setup_multiple_heads(project):
    revisions = project.revisions()
    for rev_id in ("branch01", "branch02"):
        project.add_revision(rev_id, "def upgrade():\n    pass\n", down_revision=revisions[-1])
    return "db merge heads"


def setup_at_base(project):
    assert project.db("downgrade", "base", "-x", "backup=off", "-x", "yes")[0] == 0
    return "Error: nothing to downgrade: the database is at base"


def setup_not_at_head(project):
    assert project.db("downgrade", "-x", "backup=off")[0] == 0
    return "Run `db upgrade` first"


BAD_INPUTS = {
    "unknown revision": (None, ["upgrade", "nosuchrev"],
                         "Error: Can't locate revision identified by 'nosuchrev'"),
    "downgrade below base": (None, ["downgrade", "-5"], "Relative revision -5 didn't produce 5"),
    "downgrade at base": (setup_at_base, ["downgrade"], None),
    "unknown command": (None, ["frobnicate"], None),
    "syntax error in a revision": (setup_syntax_error, ["upgrade"], None),
    "import error in a revision": (setup_import_error, ["upgrade"], None),
    "multiple heads": (setup_multiple_heads, ["upgrade", "head"], None),
    "migrate when not at head": (setup_not_at_head, ["migrate", "-m", "x"], None),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_and_changes_nothing(project, case):
    setup, args, expected = BAD_INPUTS[case]
    assert project.db("upgrade")[0] == 0
    project.populate()
    if setup:
        expected = setup(project)
    before = database_fingerprint(project)

    code, output = project.db(*args)

    assert code != 0
    assert "Traceback" not in output
    if case == "unknown command":  # each CLI's own usage message, exit 2
        assert code == 2
        assert ("invalid choice: 'frobnicate'" if project.cli == "manager"
                else "No such command 'frobnicate'") in output, output
    else:  # exactly one line
        assert len(output.splitlines()) == 1 and output.startswith("Error: "), output
        assert expected in output, output
    assert database_fingerprint(project) == before


def test_init_over_an_existing_folder_overwrites_nothing(sqlite_project):
    migrations = sqlite_project.path / "migrations"
    before = {p: file_hash(p) for p in migrations.rglob("*") if p.is_file()}

    code, output = sqlite_project.db("init")

    assert code == 1
    assert "already exists and is not empty" in output and "Traceback" not in output
    assert {p: file_hash(p) for p in migrations.rglob("*") if p.is_file()} == before


def test_malformed_database_url_is_one_line(sqlite_project):
    code, output = sqlite_project.db("upgrade", env={"DATABASE_URL": "postgres//nohost"})

    assert code == 1
    assert output.strip() == (
        f"Error: DATABASE_URL is not a database URL ({sqlalchemy_parse_error('postgres//nohost')})")


def test_a_malformed_timeout_is_one_line(sqlite_project):
    code, output = sqlite_project.db("current", env={"MIGRATE_LOCK_TIMEOUT": "soon"})

    assert (code, output.strip()) == (
        1, ("Error: MIGRATE_LOCK_TIMEOUT must be a number of seconds from 0 to 2147483.647, "
            "not 'soon'"))


def test_a_file_that_is_not_sqlite_is_left_alone(sqlite_project):
    data = sqlite_project.path / "data.db"
    data.write_bytes(b"not a database, just some bytes\n" * 100)
    before = file_hash(data)

    code, output = sqlite_project.db("upgrade")

    assert code == 1
    assert output.strip() == "Error: file is not a database"
    assert file_hash(data) == before


def test_a_locked_sqlite_file_is_reported_and_left_alone(sqlite_project):
    assert sqlite_project.db("upgrade", sqlite_project.revisions()[1])[0] == 0
    data = sqlite_project.path / "data.db"
    before = file_hash(data)
    other = sqlite3.connect(data, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        code, output = sqlite_project.db("upgrade", env={"MIGRATE_LOCK_TIMEOUT": "0.5"})
    finally:
        other.rollback()
        other.close()

    assert code == 1
    assert output.splitlines()[-1] == (
        "Error: another connection holds the database (an open transaction?); gave up waiting "
        "after MIGRATE_LOCK_TIMEOUT, nothing of the revision in progress kept"), output
    assert "Traceback" not in output
    assert file_hash(data) == before


@pytest.mark.postgresql
@pytest.mark.parametrize("backend", ["postgresql"])
def test_wrong_password_is_one_line(project):
    wrong = project.database_url.replace(":migrate-secret@", ":wrong@")

    code, output = project.db("upgrade", env={"DATABASE_URL": wrong})

    assert code == 1
    assert "password authentication failed for user \"postgres\"" in output
    assert len(output.strip().splitlines()) == 1
    assert project.tables() == set()


@pytest.mark.postgresql
@pytest.mark.parametrize("backend", ["postgresql"])
def test_unreachable_server_is_one_line(project):
    code, output = project.db("upgrade", env={"DATABASE_URL": "postgresql://u:p@127.0.0.1:1/x"})

    assert code == 1
    assert output.strip() == (
        'Error: connection to server at "127.0.0.1", port 1 failed: Connection refused'
    )


# --- snapshots --------------------------------------------------------------------------


def snapshots(project):
    return sorted((project.path / "backups").glob("data.*.db"))


def test_upgrade_snapshots_the_sqlite_file_first(sqlite_project):
    first, _, head = sqlite_project.revisions()
    assert sqlite_project.db("upgrade", first)[0] == 0
    sqlite_project.populate()
    assert snapshots(sqlite_project) == []
    before = sqlite_project.state()

    code, output = sqlite_project.db("upgrade")

    assert code == 0, output
    [snapshot] = snapshots(sqlite_project)
    assert snapshot.name.startswith(f"data.db.{first}-{head}.")
    assert f"saved to {snapshot}" in output
    from_snapshot = type(sqlite_project)(sqlite_project.path, f"sqlite:///{snapshot}")
    assert from_snapshot.state() == before


def test_downgrade_snapshots_and_restore_puts_it_back(sqlite_project):
    first, _, head = sqlite_project.revisions()
    assert sqlite_project.db("upgrade")[0] == 0
    sqlite_project.populate()
    before = sqlite_project.state()

    assert sqlite_project.db("downgrade", first)[0] == 0
    [snapshot] = snapshots(sqlite_project)
    assert snapshot.name.startswith(f"data.db.{head}-{first}.")

    code, output = sqlite_project.db("restore", snapshot)
    assert code == 0, output
    assert sqlite_project.state() == before


def test_backup_off_skips_the_snapshot(sqlite_project):
    assert sqlite_project.db("upgrade", sqlite_project.revisions()[0])[0] == 0

    assert sqlite_project.db("upgrade", "-x", "backup=off")[0] == 0

    assert snapshots(sqlite_project) == []


def test_only_the_newest_ten_snapshots_are_kept(sqlite_project):
    assert sqlite_project.db("upgrade")[0] == 0
    printed = []
    for _ in range(6):
        for command in ("downgrade", "upgrade"):
            code, output = sqlite_project.db(command)
            assert code == 0, output
            printed += [line.rpartition(" saved to ")[2] for line in output.splitlines()
                        if line.startswith("Snapshot of data.db (") and " saved to " in line]

    assert len(printed) == 12
    kept = {str(p) for p in snapshots(sqlite_project)}
    assert kept == set(printed[-10:]) and printed[-1] in kept
