"""MySQL/MariaDB: the package's guarantees on a real MariaDB server (Debian's mariadb-server,
started by conftest's `mariadb_server`), through both CLIs: one migration at a time, a
half-applied revision resumed after it is fixed, rows written before a DDL statement refused
before anything runs, and an ALTER behind an open transaction that does not queue the app's
queries. The tutorial's models use `db.String` without a length, which MySQL rejects, so
these tests use revisions of their own."""
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import CLIS, MariaDBServer, fresh_databases

from safe_migrate.mysql import LOCK_NAME, kind, rows_before_ddl
from safe_migrate.settings import Settings

mariadb = pytest.mark.mariadb

BASE = '''
def upgrade():
    op.create_table(
        "employee",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50)),
        sa.Column("age", sa.Integer))
    op.execute("INSERT INTO employee (id, name, age) VALUES (1, 'ann', 30)")


def downgrade():
    op.drop_table("employee")
'''

ADD_DEPT = '''
def upgrade():
    op.add_column("employee", sa.Column("dept", sa.String(20)))


def downgrade():
    op.drop_column("employee", "dept")
'''

# Waits for the test's GET_LOCK('gate'): slow until the test says, with no sleep.
SLOW = '''
def upgrade():
    op.execute("SELECT GET_LOCK('gate', 60)")
    op.add_column("employee", sa.Column("dept", sa.String(20)))


def downgrade():
    op.drop_column("employee", "dept")
'''

HALF_FAILING = '''
def upgrade():
    op.add_column("employee", sa.Column("dept", sa.String(20)))
    op.execute("UPDATE employee SET age = age + 1")
    op.execute("THIS IS NOT SQL")


def downgrade():
    op.drop_column("employee", "dept")
'''

DML_FIRST = '''
def upgrade():
    op.execute("UPDATE employee SET age = age + 1")
    op.add_column("employee", sa.Column("dept", sa.String(20)))


def downgrade():
    op.drop_column("employee", "dept")
'''

COLUMN_THEN_WAITING = '''
def upgrade():
    op.add_column("employee", sa.Column("dept", sa.String(20)))
    op.execute("SELECT GET_LOCK('gate', 60)")
    op.add_column("employee", sa.Column("room", sa.String(20)))


def downgrade():
    op.drop_column("employee", "room")
    op.drop_column("employee", "dept")
'''

# The same through the revision's connection, as data migrations often run their SQL: what
# Alembic's offline rendering cannot see, the statements the driver sends still are.
HALF_FAILING_ON_THE_BIND = '''
def upgrade():
    bind = op.get_bind()
    bind.execute(sa.text("ALTER TABLE employee ADD COLUMN dept VARCHAR(20)"))
    bind.execute(sa.text("UPDATE employee SET age = age + :years"), {"years": 1})
    assert bind.execute(sa.text("SELECT age FROM employee WHERE id = 1")).scalar() == 31
    bind.execute(sa.text("THIS IS NOT SQL"))


def downgrade():
    op.drop_column("employee", "dept")
'''

# Reads the database first: Alembic's offline rendering cannot run it, so only the check
# of each statement as it runs sees the UPDATE before the ALTER.
# And through an ORM session on the revision's connection, Alembic's recipe for data migrations.
HALF_FAILING_IN_A_SESSION = HALF_FAILING_ON_THE_BIND.replace(
    "bind = op.get_bind()", "bind = sa.orm.Session(bind=op.get_bind())")

DML_FIRST_ON_THE_BIND = '''
def upgrade():
    bind = op.get_bind()
    if bind.execute(sa.text("SELECT count(*) FROM employee")).scalar():
        bind.execute(sa.text("UPDATE employee SET age = age + 1"))
    bind.execute(sa.text("ALTER TABLE employee ADD COLUMN dept VARCHAR(20)"))


def downgrade():
    pass
'''

HALF_FAILING_DOWN = '''
def upgrade():
    op.add_column("employee", sa.Column("dept", sa.String(20)))


def downgrade():
    op.drop_column("employee", "dept")
    op.execute("THIS IS NOT SQL")
'''

AUDIT = """
def upgrade():
    op.create_table("audit", sa.Column("id", sa.Integer, primary_key=True))
    op.execute("INSERT INTO audit (id) VALUES (1), (2)")


def downgrade():
    op.execute("DROP TABLE audit")
"""

MIGRATION_LOCK_WAIT = "User lock"  # PROCESSLIST.STATE of a session waiting in GET_LOCK
METADATA_LOCK_WAIT = "Waiting for table metadata lock"


@pytest.fixture(params=CLIS)
def cli(request):
    return request.param


def write_base(project, body=BASE):
    """The history's first revision, base0001."""
    path = project.path / "migrations" / "versions" / "base0001_test.py"
    path.write_text(
        "import sqlalchemy as sa\nfrom alembic import op\n\nrevision = 'base0001'\n"
        "down_revision = None\nbranch_labels = None\ndepends_on = None\n" + body)
    return path


@pytest.fixture
def lock_info_plugin(request):
    """Whether the test's server has MariaDB's metadata_lock_info plugin (parametrized
    indirectly; off unless a test asks)."""
    return getattr(request, "param", False)


@pytest.fixture(scope="module")
def mariadb_with_lock_info():
    """A second throwaway server, with metadata_lock_info loaded for good: a server whose
    plugin was unloaded again (UNINSTALL SONAME) crashed in a later test here."""
    server = MariaDBServer(Path(tempfile.mkdtemp(prefix="migrate-mariadb-")))
    server.start()
    server.admin("INSTALL SONAME 'metadata_lock_info'")
    yield server
    server.stop()
    shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture
def new_mariadb_database(request, lock_info_plugin):
    """conftest's, on the server with the plugin where the test asks for it."""
    server = request.getfixturevalue("mariadb_with_lock_info" if lock_info_plugin
                                     else "mariadb_server")
    yield from fresh_databases(server, "DROP DATABASE IF EXISTS {}")


@pytest.fixture
def fresh_project(make_project, new_mariadb_database):
    """The project on a fresh MariaDB database, with none of the tutorial's revisions."""
    project = make_project(database_url=new_mariadb_database())
    for old in (project.path / "migrations" / "versions").glob("*.py"):
        old.unlink()
    return project


@pytest.fixture
def project(fresh_project):
    """The project on a fresh MariaDB database, its history one revision of ours, applied."""
    project = fresh_project
    write_base(project)
    code, out = project.db("upgrade")
    assert code == 0, out
    return project


@pytest.fixture
def sessions(project):
    """Connections of the test's own (the app's other sessions), closed at the end."""
    engine = sa.create_engine(project.database_url, poolclass=sa.pool.NullPool)
    opened = []

    def connect(**options):
        opened.append(engine.connect().execution_options(**options))
        return opened[-1]

    yield connect
    for conn in opened:
        conn.close()
    engine.dispose()


def sessions_in(conn, state):
    """How many sessions on this database are in PROCESSLIST state `state`."""
    return conn.execute(sa.text(
        "SELECT count(*) FROM information_schema.PROCESSLIST"
        " WHERE DB = DATABASE() AND STATE = :state AND ID <> CONNECTION_ID()"),
        {"state": state}).scalar()


def wait_until(condition, *procs, timeout=60):
    """Poll the server until `condition()` holds; fail if a process ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        for proc in procs:
            assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"


def age(project):
    return project.query("SELECT age FROM employee WHERE id = 1")[0][0]


def dept_columns(project):
    return [c for c in project.columns("employee") if c == "dept"]


@mariadb
def test_two_concurrent_upgrades_apply_the_revision_once(project, sessions):
    project.add_revision("slow0002", SLOW)
    gate = sessions(isolation_level="AUTOCOMMIT")
    assert gate.execute(sa.text("SELECT GET_LOCK('gate', 0)")).scalar() == 1
    first = project.db_started("upgrade")
    second = None
    try:
        wait_until(lambda: sessions_in(gate, MIGRATION_LOCK_WAIT) == 1, first)  # on the gate
        second = project.db_started("upgrade")
        # The second run waits on the migration lock, the first still on the gate.
        wait_until(lambda: sessions_in(gate, MIGRATION_LOCK_WAIT) == 2, first, second)
        gate.execute(sa.text("SELECT RELEASE_LOCK('gate')"))
        outputs = [proc.communicate(timeout=120) for proc in (first, second)]
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert [first.returncode, second.returncode] == [0, 0], outputs
    assert "Already at head (slow0002)" in outputs[1][0], outputs
    assert dept_columns(project) == ["dept"]
    assert project.version() == "slow0002"


@mariadb
def test_a_half_failing_revision_says_what_committed_and_resumes_once_fixed(project):
    path = project.add_revision("half0002", HALF_FAILING)
    code, out = project.db("upgrade")
    assert code != 0
    error = out.strip().splitlines()[-1]
    assert error.startswith("Error: ")
    assert "1 of its statements committed and stay: 1) ALTER TABLE employee ADD COLUMN dept" \
        in error, error
    assert "between base0001 and half0002" in error, error
    assert "rolled back" not in out
    assert dept_columns(project) == ["dept"]  # the ALTER committed
    assert age(project) == 30  # the UPDATE had not: it was undone with the failed statement
    assert project.version() == "base0001"

    path.write_text(path.read_text().replace("THIS IS NOT SQL", "SELECT 1"))
    code, out = project.db("upgrade")
    assert code == 0, out
    assert dept_columns(project) == ["dept"]
    assert age(project) == 31
    assert project.version() == "half0002"
    assert project.query("SELECT count(*) FROM safe_migrate_journal") == [(0,)]


@mariadb
@pytest.mark.parametrize("revision", [HALF_FAILING_ON_THE_BIND, HALF_FAILING_IN_A_SESSION],
                         ids=["bind", "session"])
def test_statements_run_on_the_bind_are_journaled_and_resumed_too(project, revision):
    path = project.add_revision("half0002", "import sqlalchemy.orm\n" + revision)
    code, out = project.db("upgrade")
    assert code != 0
    error = out.strip().splitlines()[-1]
    assert "1 of its statements committed and stay: 1) ALTER TABLE employee ADD COLUMN dept" \
        in error, error
    assert "rolled back" not in out
    assert dept_columns(project) == ["dept"]
    assert age(project) == 30

    path.write_text(path.read_text().replace("THIS IS NOT SQL", "SELECT 1"))
    code, out = project.db("upgrade")
    assert code == 0, out  # the ALTER skipped; the SELECT read 31 again; the UPDATE ran once
    assert age(project) == 31
    assert project.version() == "half0002"
    assert project.query("SELECT count(*) FROM safe_migrate_journal") == [(0,)]


@mariadb
def test_rows_written_on_the_bind_before_a_ddl_statement_are_refused_before_it_runs(project):
    project.add_revision("dml0002", DML_FIRST_ON_THE_BIND)
    code, out = project.db("upgrade")
    assert code != 0
    assert out.strip().splitlines()[-1] == (
        "Error: dml0002_test.py: statement 2 (ALTER TABLE employee ADD COLUMN dept VARCHAR(20)) "
        "is DDL, which MySQL and MariaDB commit together with the rows written before it "
        "(UPDATE employee SET age = age + 1); refused before it ran, those rows were rolled "
        "back: write rows after the DDL statements, or in a revision of their own"), out
    assert age(project) == 30
    assert dept_columns(project) == []
    assert project.version() == "base0001"


@mariadb
def test_a_changed_committed_statement_is_refused(project):
    path = project.add_revision("half0002", HALF_FAILING)
    assert project.db("upgrade")[0] != 0
    project.edit_file(path, "sa.String(20)", "sa.String(30)")
    code, out = project.db("upgrade")
    assert code != 0
    assert "statement 1" in out and "put that statement back" in out, out
    assert project.version() == "base0001"


@mariadb
def test_a_half_applied_revision_blocks_a_downgrade(project):
    project.add_revision("half0002", HALF_FAILING)
    assert project.db("upgrade")[0] != 0
    code, out = project.db("downgrade", "-x", "yes")
    assert code != 0
    assert "half0002 is half-applied" in out, out
    assert project.tables() >= {"employee"}
    assert project.version() == "base0001"


@mariadb
def test_rows_written_before_a_ddl_statement_are_refused_before_anything_runs(project):
    project.add_revision("dml0002", DML_FIRST)
    code, out = project.db("upgrade")
    assert code != 0
    assert "refused before anything ran" in out and "UPDATE employee" in out, out
    assert age(project) == 30
    assert dept_columns(project) == []
    assert project.version() == "base0001"


@mariadb
@pytest.mark.parametrize("lock_info_plugin", [False, True], indirect=True,
                         ids=["innodb_trx", "metadata_lock_info"])
def test_an_alter_behind_an_open_reader_does_not_queue_the_app(project, sessions,
                                                                lock_info_plugin):
    project.add_revision("dept0002", ADD_DEPT)
    project.env["MIGRATE_DDL_LOCK_TIMEOUT"] = "1"
    reader = sessions()
    reading = reader.begin()
    reader.execute(sa.text("SELECT * FROM employee")).all()  # its transaction stays open
    reader_id = reader.execute(sa.text("SELECT CONNECTION_ID()")).scalar()
    watcher = sessions(isolation_level="AUTOCOMMIT")
    app = sessions(isolation_level="AUTOCOMMIT")
    # Without the migration's limit the app's query would wait for the ALTER for hours:
    # fail after 10 s instead.
    app.execute(sa.text("SET SESSION lock_wait_timeout = 10"))
    proc = project.db_started("upgrade")
    try:
        wait_until(lambda: sessions_in(watcher, METADATA_LOCK_WAIT) == 1, proc)
        start = time.monotonic()
        app.execute(sa.text("SELECT count(*) FROM employee")).scalar()
        assert time.monotonic() - start < 2
        for line in proc.stderr:
            if "retrying" in line:
                assert "it changed nothing" in line, line
                held = ("MDL_SHARED_READ on employee" if lock_info_plugin
                        else "transaction open since")
                assert f"held by connection {reader_id} (migrate, Sleep for " in line, line
                assert held in line, line
                break
        reading.rollback()  # the reader ends
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert dept_columns(project) == ["dept"]
    assert project.version() == "dept0002"


@mariadb
def test_a_half_failing_first_revision_resumes_on_an_empty_database(fresh_project):
    project = fresh_project
    path = write_base(project, BASE.replace(
        '    op.execute("INSERT', '    op.create_index("ix_age", "employee", ["age"])\n'
        '    op.execute("THIS IS NOT SQL")\n    op.execute("INSERT'))
    code, out = project.db("upgrade")
    assert code != 0
    assert "2 of its statements committed and stay" in out and "rolled back" not in out, out
    assert "between base and base0001" in out, out
    path.write_text(path.read_text().replace('    op.execute("THIS IS NOT SQL")\n', ""))
    code, out = project.db("upgrade")
    assert code == 0, out
    assert project.version() == "base0001"
    assert age(project) == 30


@mariadb
def test_a_run_that_cannot_get_the_lock_names_the_holder(project, sessions):
    holder = sessions(isolation_level="AUTOCOMMIT")
    assert holder.execute(sa.text(f"SELECT GET_LOCK({LOCK_NAME}, 0)")).scalar() == 1
    me = holder.execute(sa.text("SELECT CONNECTION_ID()")).scalar()
    project.add_revision("dept0002", ADD_DEPT)
    code, out = project.db("upgrade", env={"MIGRATE_LOCK_TIMEOUT": "1"})
    assert code == 1
    line = out.strip().splitlines()[-1]
    assert line.startswith(f"Error: another migration of this database is running (connection "
                           f"{me}, migrate from "), line
    assert line.endswith("gave up after 1 s (MIGRATE_LOCK_TIMEOUT)"), line
    assert dept_columns(project) == []


@pytest.mark.parametrize(("sql", "expected"), [
    ("ALTER TABLE employee ADD COLUMN dept VARCHAR(20)", "ddl"),
    ("CREATE INDEX ix ON employee (age)", "ddl"),
    ("DROP TABLE employee", "ddl"),
    ("TRUNCATE TABLE employee", "ddl"),
    ("RENAME TABLE employee TO staff", "ddl"),
    ("UPDATE employee SET age = age + 1", "dml"),
    ("INSERT INTO employee (id) VALUES (2)", "dml"),
    ("DELETE FROM employee", "dml"),
    ("REPLACE INTO employee (id) VALUES (2)", "dml"),
    ("SELECT GET_LOCK('gate', 60)", None),
    ("THIS IS NOT SQL", None),
])
def test_statements_are_classified_by_the_parser(sql, expected):
    assert kind(sql) == expected


def test_rows_before_ddl_is_the_first_write_before_a_later_ddl():
    assert rows_before_ddl(["ALTER TABLE t ADD COLUMN c INT", "UPDATE t SET c = 1"]) is None
    assert rows_before_ddl(["SELECT 1", "UPDATE t SET c = 1", "SELECT 2",
                            "ALTER TABLE t ADD COLUMN d INT"]) == (
        "UPDATE t SET c = 1", "ALTER TABLE t ADD COLUMN d INT")


def test_the_ddl_lock_timeout_has_one_name_for_every_database(monkeypatch):
    monkeypatch.delenv("MIGRATE_DDL_LOCK_TIMEOUT", raising=False)
    monkeypatch.delenv("MIGRATE_PG_LOCK_TIMEOUT", raising=False)
    assert Settings().ddl_lock_timeout == 2.0
    monkeypatch.setenv("MIGRATE_PG_LOCK_TIMEOUT", "3")  # the older, PostgreSQL name
    assert (Settings().ddl_lock_timeout, Settings().pg_lock_timeout) == (3.0, 3.0)
    monkeypatch.setenv("MIGRATE_DDL_LOCK_TIMEOUT", "1.5")  # wins, on PostgreSQL too
    assert (Settings().ddl_lock_timeout, Settings().pg_lock_timeout) == (1.5, 1.5)


@mariadb
def test_db_lint_names_rows_written_before_a_ddl_statement(project):
    project.add_revision("dml0002", DML_FIRST)
    code, out = project.db("lint", "dml0002")
    assert code == 1
    assert "dml0002_test.py:" in out and "mysql-rows-before-ddl" in out, out
    assert "UPDATE employee SET age = age + 1" in out, out
    (project.path / "migrations" / "versions" / "dml0002_test.py").unlink()
    project.add_revision("dept0002", ADD_DEPT)
    code, out = project.db("lint", "dept0002")
    assert code == 0, out
    assert age(project) == 30


@mariadb
def test_a_half_failing_downgrade_says_what_committed(project):
    project.add_revision("down0002", HALF_FAILING_DOWN)
    assert project.db("upgrade")[0] == 0
    code, out = project.db("downgrade")
    assert code != 0
    error = out.strip().splitlines()[-1]
    assert "1 of its statements committed and stay: 1) ALTER TABLE employee DROP COLUMN dept" \
        in error, error
    assert "between down0002 and base0001" in error and "rolled back" not in out, error
    assert dept_columns(project) == []
    assert project.version() == "down0002"


@mariadb
def test_ctrl_c_says_which_statements_committed(project, sessions):
    project.add_revision("wait0002", COLUMN_THEN_WAITING)
    gate = sessions(isolation_level="AUTOCOMMIT")
    assert gate.execute(sa.text("SELECT GET_LOCK('gate', 0)")).scalar() == 1
    run = project.db_started("upgrade")
    try:
        wait_until(lambda: sessions_in(gate, MIGRATION_LOCK_WAIT) == 1, run)
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 130, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(
        "Error: interrupted during the upgrade of wait0002: its statements that had committed "
        "stay (1) ALTER TABLE employee ADD COLUMN dept VARCHAR(20)"), line
    assert "rolled back" not in err
    assert dept_columns(project) == ["dept"]
    assert project.version() == "base0001"


@mariadb
def test_rows_dropped_by_sql_unasked_are_not_called_rolled_back(project):
    project.add_revision("audit0002", AUDIT)
    assert project.db("upgrade")[0] == 0
    code, out = project.db("downgrade")
    assert code != 0
    line = out.strip().splitlines()[-1]
    assert "dropped audit (2 rows)" in line and "rolled back" not in out, line
    assert "its DDL statements had committed and the loss stays" in line, line
    assert "audit" not in project.tables()
    assert project.version() == "audit0002"
