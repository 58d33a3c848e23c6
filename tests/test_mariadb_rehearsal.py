"""MySQL/MariaDB, on a real MariaDB server: `--rehearse` on a scratch database (the real
database's dump identical before and after, the scratch database gone, rows and the ALTER
algorithm reported), String columns without a length named before anything is written, the
hint on the revision that fails for one, and what the snapshot step says there."""
import shutil
import signal
import subprocess
import uuid

import pytest
import sqlalchemy as sa
from conftest import CLIS, MARIADB_PATH, PG_PASSWORD

pytestmark = pytest.mark.mariadb

DUMP = shutil.which("mariadb-dump", path=MARIADB_PATH)


@pytest.fixture(params=CLIS)
def cli(request):
    return request.param


@pytest.fixture
def mariadb_project(make_project, new_mariadb_database):
    """The project on a fresh MariaDB database, its history's String columns given lengths
    (the tutorial's history has none, which MySQL cannot create)."""
    project = make_project(database_url=new_mariadb_database())
    for path in (project.path / "migrations" / "versions").glob("*.py"):
        path.write_text(path.read_text().replace("sa.String()", "sa.String(80)"))
    return project


def database_of(project):
    return sa.engine.make_url(project.database_url).database


def dump(project, mariadb_server):
    """The database as mariadb-dump writes it: schema and rows, no date, no comments."""
    return subprocess.run(
        [DUMP, "--no-defaults", "--skip-dump-date", "--skip-comments", "-h", "127.0.0.1",
         "-P", str(mariadb_server.port), "-u", "migrate", f"--password={PG_PASSWORD}",
         database_of(project)],
        check=True, capture_output=True, text=True).stdout


def scratch_databases(project):
    """The rehearsal's scratch databases of the project's database still on the server."""
    prefix = database_of(project) + "_rehearsal_"
    return [name for (name,) in project.query("SHOW DATABASES") if name.startswith(prefix)]


def at_head_with_rows(project):
    code, out = project.db("upgrade")
    assert code == 0, out
    project.populate(50)


ALTERS = '''
def upgrade():
    op.add_column("employee", sa.Column("dept", sa.String(40), nullable=True))
    op.alter_column("employee", "age", existing_type=sa.Integer(), type_=sa.String(20))
    op.execute("UPDATE employee SET dept = 'sales'")

def downgrade():
    op.alter_column("employee", "age", existing_type=sa.String(20), type_=sa.Integer())
    op.drop_column("employee", "dept")
'''


def test_rehearse_leaves_the_database_as_it_was_and_names_each_alter_algorithm(
        mariadb_project, mariadb_server):
    project = mariadb_project
    at_head_with_rows(project)
    project.add_revision("r1alters", ALTERS)
    before = dump(project, mariadb_server)

    code, out = project.db("upgrade", "--rehearse")

    assert code == 0, out
    assert dump(project, mariadb_server) == before
    assert scratch_databases(project) == []
    assert project.version() != "r1alters"
    assert "Rehearsing on " + database_of(project) + "_rehearsal_" in out
    assert "rows: company 50 -> 50, employee 50 -> 50" in out
    lines = out.splitlines()
    add = [line for line in lines if "ADD COLUMN dept" in line]
    assert len(add) == 1 and "(INSTANT)" in add[0], out
    change = [line for line in lines if "MODIFY age" in line]
    assert len(change) == 1 and "copies the table (COPY): writes to employee block" in change[0]
    assert not [line for line in lines if "UPDATE employee" in line]  # rows, not an ALTER
    assert "Rehearsal done: the scratch database" in out

    # The rehearsal changed nothing: the real run does all of it.
    code, out = project.db("upgrade")
    assert code == 0, out
    assert project.version() == "r1alters"
    assert project.query("SELECT count(*) FROM employee WHERE dept = 'sales'") == [(50,)]


FAILING = '''
def upgrade():
    op.add_column("employee", sa.Column("dept", sa.String(40), nullable=True))
    op.execute("UPDATE employee SET no_such_column = 1")

def downgrade():
    op.drop_column("employee", "dept")
'''


def test_a_failed_rehearsal_leaves_no_scratch_database_and_the_database_as_it_was(
        mariadb_project, mariadb_server):
    project = mariadb_project
    at_head_with_rows(project)
    project.add_revision("r1fails", FAILING)
    before = dump(project, mariadb_server)

    code, out = project.db("upgrade", "--rehearse")

    assert code == 1, out
    assert "no_such_column" in out.splitlines()[-1]
    assert dump(project, mariadb_server) == before
    assert scratch_databases(project) == []
    assert "dept" not in project.columns("employee")


def test_rehearse_refuses_a_database_larger_than_its_limit_before_copying(mariadb_project,
                                                                         mariadb_server):
    project = mariadb_project
    at_head_with_rows(project)
    project.add_revision("r1alters", ALTERS)
    before = dump(project, mariadb_server)

    code, out = project.db("upgrade", "--rehearse", env={"MIGRATE_REHEARSAL_MAX_MB": "0.01"})

    assert code == 1, out
    assert out.strip().splitlines()[-1].startswith("Error: --rehearse refused: ")
    assert "MIGRATE_REHEARSAL_MAX_MB" in out
    assert dump(project, mariadb_server) == before
    assert scratch_databases(project) == []


def test_migrate_and_check_name_strings_without_a_length(make_project, new_mariadb_database):
    project = make_project(database_url=new_mariadb_database())
    versions = sorted(p.name for p in (project.path / "migrations" / "versions").glob("*.py"))

    code, out = project.db("migrate", "-m", "more")

    assert code == 1, out
    assert ("employee.name: String without a length; " in out
            and "MySQL needs VARCHAR(n): write db.String(n)" in out), out
    assert "nothing was written" in out
    assert sorted(p.name for p in (project.path / "migrations" / "versions").glob("*.py")) \
        == versions

    code, out = project.db("check")

    assert code == 1, out
    assert [line for line in out.splitlines() if line.startswith("column types: ")
            and "company.cname: String without a length" in line], out


def test_upgrade_of_a_revision_with_a_lengthless_string_says_what_to_write(
        make_project, new_mariadb_database):
    project = make_project(database_url=new_mariadb_database())

    code, out = project.db("upgrade")

    assert code == 1, out
    error = out.strip().splitlines()[-1]
    assert error.startswith("Error: ") and "VARCHAR requires a length" in error
    assert "write sa.String(n) in the revision and db.String(n) in the model" in error


def test_the_snapshot_step_says_what_protects_the_data(mariadb_project):
    mariadb_project.add_revision("r1alters", ALTERS)
    code, out = mariadb_project.db("upgrade")

    assert code == 0, out
    line = [line for line in out.splitlines() if line.startswith("No snapshot on MySQL")]
    assert len(line) == 1, out
    assert "db upgrade --rehearse" in line[0] and "journal" in line[0]
    assert "mariadb-dump --single-transaction" in line[0]

    code, out = mariadb_project.db("downgrade", "-x", "backup=off")
    assert code == 0, out
    assert "No snapshot" not in out
    assert mariadb_project.version() == "edee0e2ae9aa"


def test_round_trip_and_downgrade_rehearsals_on_scratch_databases(mariadb_project,
                                                                  mariadb_server):
    project = mariadb_project
    at_head_with_rows(project)
    project.add_revision("r1alters", ALTERS)
    before = dump(project, mariadb_server)

    code, out = project.db("upgrade", "--round-trip")

    assert code == 0, out
    assert "Round trip: back to edee0e2ae9aa and upgrade again; every row is as" in out
    assert dump(project, mariadb_server) == before
    assert scratch_databases(project) == []

    code, out = project.db("upgrade")
    assert code == 0, out
    before = dump(project, mariadb_server)

    code, out = project.db("downgrade", "--rehearse")

    assert code == 0, out
    assert "Running downgrade r1alters -> edee0e2ae9aa" in out
    assert [line for line in out.splitlines() if "DROP COLUMN dept" in line
            and "(INSTANT)" in line], out
    assert dump(project, mariadb_server) == before
    assert scratch_databases(project) == []
    assert project.version() == "r1alters"


WAITING = '''
def upgrade():
    op.add_column("employee", sa.Column("dept", sa.String(40), nullable=True))
    op.execute("SELECT GET_LOCK('LOCK_NAME', 600)")

def downgrade():
    op.drop_column("employee", "dept")
'''


def test_ctrl_c_during_a_rehearsal_drops_the_scratch_database(mariadb_project, mariadb_server):
    project = mariadb_project
    at_head_with_rows(project)
    lock = f"test {uuid.uuid4().hex}"
    project.add_revision("r1waits", WAITING.replace("LOCK_NAME", lock))
    before = dump(project, mariadb_server)
    holder = project.engine().connect()
    holder.execute(sa.text("SELECT GET_LOCK(:lock, 600)"), {"lock": lock})
    waiting = sa.text("SELECT count(*) FROM information_schema.PROCESSLIST WHERE INFO = :query")
    query = {"query": f"SELECT GET_LOCK('{lock}', 600)"}
    try:
        run = project.db_started("upgrade", "--rehearse")
        while project.query(waiting.text, **query) != [(1,)]:  # the server says when it waits
            assert run.poll() is None, run.communicate()
        assert len(scratch_databases(project)) == 1
        run.send_signal(signal.SIGINT)
        output, errors = run.communicate(timeout=60)
        # Nothing of the interrupted run goes on in the server: its session was ended.
        assert project.query(waiting.text, **query) == [(0,)]
    finally:
        holder.close()

    assert run.returncode == 130, output + errors
    assert errors.splitlines()[-1].startswith("Error: interrupted"), errors
    assert scratch_databases(project) == []
    assert dump(project, mariadb_server) == before


def test_rehearse_refuses_what_a_copy_of_the_tables_would_not_carry(mariadb_project):
    project = mariadb_project
    at_head_with_rows(project)
    project.add_revision("r1alters", ALTERS)
    project.execute("CREATE TRIGGER older BEFORE UPDATE ON employee FOR EACH ROW SET NEW.age = 1")
    project.execute("CREATE VIEW adults AS SELECT id FROM employee")

    code, out = project.db("upgrade", "--rehearse")

    assert code == 1, out
    assert out.strip().splitlines()[-1] == (
        "Error: --rehearse refused: " + database_of(project) + " has adults (view), older "
        "(trigger), which a scratch copy of its tables would not carry; nothing was copied or "
        "changed")
    assert scratch_databases(project) == []
