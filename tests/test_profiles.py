"""Both profiles: what broke on the modern one (requirements-modern.txt: Flask 3,
flask-script-ng, Flask-SQLAlchemy 3, SQLAlchemy 2, Alembic 1.20) holds on whichever stack
this Python has, legacy or modern; `nox -s modern-3.13` runs them on the modern one.

A run's reads must not leave SQLAlchemy 2's autobegun transaction open (Alembic would then
commit nothing), the identity write must not begin a second transaction, a read must not take
SQLite's write lock, the Manager must import, and the app's engine options still apply.
"""
import importlib.util
import sqlite3
import sys
import textwrap

import pytest
from conftest import CLIS

from safe_migrate.compat import flask_script


@pytest.fixture(params=CLIS)
def cli(request):
    """Each guarantee here holds through both CLIs: the Manager and `flask db`."""
    return request.param


def test_flask_script_is_the_installed_one():
    """Flask-Script where it is installed (Flask 1.x), else flask-script-ng."""
    expected = "flask_script" if importlib.util.find_spec("flask_script") else "flask_script_ng"
    assert flask_script.__name__ == expected
    assert all(hasattr(flask_script, name) for name in ("Manager", "Command", "Option", "Group"))


def test_an_upgrade_commits_what_it_says_it_ran(project):
    """`db upgrade` prints "Running upgrade" for each revision: the version row, read back
    through a fresh connection, and the tables are there (SQLAlchemy 2's autobegin made it
    exit 0 with nothing committed)."""
    code, output = project.db("upgrade")
    assert code == 0, output
    assert output.count("Running upgrade") == len(project.revisions())
    head = project.revisions()[-1]
    assert project.version() == head
    assert {"employee", "company", "alembic_version"} <= project.tables()
    code, output = project.db("current")
    assert code == 0, output
    assert f"{head} (head)" in output.splitlines()


def test_flask_db_current_reads_the_upgrade(sqlite_project):
    """`flask db current` (Flask's CLI, whatever the fixture's) after an upgrade names the
    head, as does `current -v` through Alembic's own command."""
    sqlite_project.cli = "flask"
    assert sqlite_project.db("upgrade")[0] == 0
    head = sqlite_project.revisions()[-1]
    code, output = sqlite_project.db("current")
    assert (code, output.splitlines()) == (0, [f"{head} (head)"]), output
    code, output = sqlite_project.db("current", "-v")
    assert code == 0, output
    assert f"Rev: {head} (head)" in output


def test_a_downgrade_commits_too(sqlite_project):
    """The same for a downgrade: the version row moves back, read through a fresh connection."""
    assert sqlite_project.db("upgrade")[0] == 0
    code, output = sqlite_project.db("downgrade", "-x", "yes")
    assert code == 0, output
    assert sqlite_project.version() == sqlite_project.revisions()[-2]


def identity_rows(path):
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT id FROM migration_database").fetchall()


def test_the_identity_written_before_the_snapshot_is_committed(sqlite_project):
    """A database without the package's identity (made before it, or by hand) gets one in
    a transaction of its own before the snapshot: after the run's reads, without beginning a
    second transaction on SQLAlchemy 2. The snapshot and the database both carry it."""
    project = sqlite_project
    first = project.revisions()[0]
    assert project.db("upgrade", first)[0] == 0
    project.execute("DROP TABLE migration_database")
    code, output = project.db("upgrade")
    assert code == 0, output
    assert project.version() == project.revisions()[-1]
    [snapshot] = (project.path / "backups").glob("*.db")  # the first upgrade made the file
    database_identity = identity_rows(project.path / "data.db")
    assert len(database_identity) == 1
    assert identity_rows(snapshot) == database_identity


@pytest.fixture
def write_lock_held(sqlite_project):
    """Another connection holds the SQLite file's write lock (a web request writing)."""
    assert sqlite_project.db("upgrade")[0] == 0
    holder = sqlite3.connect(sqlite_project.path / "data.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO company (cname, clocation) VALUES ('held', 'here')")
    yield sqlite_project
    holder.rollback()
    holder.close()


@pytest.mark.parametrize("args", [("current", "-v"), ("history", "-i"),
                                  ("migrate", "-m", "nothing new")])
def test_a_read_does_not_wait_for_the_write_lock(write_lock_held, args):
    """Commands that read through a migration connection (Alembic's current, history -i,
    autogenerate) begin their reads as SQLite does by default: a writer holding the lock
    does not make them wait and fail (BEGIN IMMEDIATE is for a run's writes)."""
    project = write_lock_held
    code, output = project.db(*args, env={"MIGRATE_LOCK_TIMEOUT": "1"})
    assert code == 0, output
    assert "locked" not in output


def test_an_upgrade_still_waits_for_the_write_lock(write_lock_held):
    """The run's revision still takes the write lock first (BEGIN IMMEDIATE): with the lock
    held elsewhere it waits, and fails with nothing applied when MIGRATE_LOCK_TIMEOUT ends."""
    project = write_lock_held
    project.add_revision("f1", """
        def upgrade():
            op.add_column("company", sa.Column("size", sa.Integer()))

        def downgrade():
            op.drop_column("company", "size")
    """)
    code, output = project.db("upgrade", "-x", "backup=off", env={"MIGRATE_LOCK_TIMEOUT": "1"})
    assert code != 0, output
    assert output.startswith("Error: ") or "\nError: " in output, output
    assert "size" not in project.columns("company")
    assert project.version() == project.revisions()[-2]


ENGINE_OPTIONS = ("db = SQLAlchemy(app, metadata=metadata())",
                  ('app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_pre_ping": True, '
                   '"connect_args": {"timeout": 2}}\n'
                   "db = SQLAlchemy(app, metadata=metadata())"))


def test_the_apps_engine_options_apply_and_migrations_run(sqlite_project):
    """Engine options set before `SQLAlchemy(app)` (where Flask-SQLAlchemy 3 builds the
    engine) reach the app's engine on both stacks, and the migrations run beside them."""
    project = sqlite_project
    project.edit_module(*ENGINE_OPTIONS)
    code, output = project.db("upgrade")
    assert code == 0, output
    assert project.version() == project.revisions()[-1]
    script = textwrap.dedent("""
        import migrate_example as m

        with m.app.app_context():
            print("pre_ping", m.db.engine.pool._pre_ping)
    """)
    code, output = project.run(sys.executable, "-c", script)
    assert (code, output.split()) == (0, ["pre_ping", "True"]), output


def test_relative_sqlite_urls_stay_beside_the_module(sqlite_project):
    """migrate_example.py's default URL is absolute: data.db is beside the module on both
    stacks (Flask-SQLAlchemy 3 puts a relative one under instance/)."""
    assert sqlite_project.db("upgrade")[0] == 0
    assert (sqlite_project.path / "data.db").exists()
    assert not (sqlite_project.path / "instance").exists()
