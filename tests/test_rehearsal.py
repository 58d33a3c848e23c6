"""`--rehearse`: the pending revisions run for real on a copy of the SQLite file, each one
reported; the real file stays byte-identical. `--round-trip` also goes back and again."""
import re
import textwrap

import pytest
from conftest import CLIS, file_hash


@pytest.fixture(params=CLIS)
def cli(request):
    return request.param


@pytest.fixture
def pending(sqlite_project):
    """The project at its first revision, with rows, and two revisions to go."""
    assert sqlite_project.db("upgrade", sqlite_project.revisions()[0])[0] == 0
    sqlite_project.populate()
    return sqlite_project


def test_rehearse_reports_each_revision_and_changes_nothing(pending):
    project = pending
    database = project.path / "data.db"
    before = file_hash(database)

    code, output = project.db("upgrade", "--rehearse")

    assert code == 0, output
    times = re.findall(r"Running upgrade \S+ -> (\S+), .* \.\.\.\n.*  done in \d+\.\d\d s",
                       output)
    assert times == project.revisions()[1:], output
    assert output.count("rows: company 1000 -> 1000, employee 1000 -> 1000") == 2, output
    assert f"Rehearsal done: {database} was not changed" in output
    assert file_hash(database) == before
    assert project.version() == project.revisions()[0]
    assert not (project.path / "backups").exists()
    [folder] = re.findall(r"copy of data.db in (\S+);", output)
    assert not (project.path / folder).exists()


def test_a_failing_revision_fails_the_rehearsal(pending):
    project = pending
    path = project.add_revision("fail0001", """
        def upgrade():
            op.execute("DELETE FROM company")
            raise RuntimeError("not on real data")


        def downgrade():
            pass
    """)
    before = file_hash(project.path / "data.db")

    code, output = project.db("upgrade", "--rehearse")

    assert code == 1
    assert output.splitlines()[-1].startswith(f"Error: {path}, line "), output
    assert "not on real data" in output
    assert file_hash(project.path / "data.db") == before


def test_round_trip_finds_rows_a_downgrade_loses(pending):
    project = pending
    assert project.db("upgrade")[0] == 0
    project.add_revision("lose0001", textwrap.dedent("""
        def upgrade():
            pass


        def downgrade():
            op.execute("DELETE FROM employee WHERE id > 600")
    """))
    before = file_hash(project.path / "data.db")

    code, output = project.db("upgrade", "--round-trip")

    assert code == 1
    assert output.splitlines()[-1] == "Error: the round trip lost rows: employee (400 rows)", output
    assert file_hash(project.path / "data.db") == before


def test_round_trip_of_the_tutorial_keeps_every_row(pending):
    code, output = pending.db("upgrade", "--round-trip")

    assert code == 0, output
    assert "every row is as the first upgrade left it" in output


WIDEN_AGE = """
    def upgrade():
        op.alter_column("employee", "age", type_=sa.BigInteger, existing_type=sa.Integer)


    def downgrade():
        op.alter_column("employee", "age", type_=sa.Integer, existing_type=sa.BigInteger)
"""


@pytest.fixture
def pending_on_postgresql(make_project, new_pg_database):
    """On PostgreSQL: the project at its first revision, with rows, and three revisions to go
    (the tutorial's two and one that rewrites employee)."""
    project = make_project(database_url=new_pg_database())
    assert project.db("upgrade", project.revisions()[0])[0] == 0
    project.populate()
    project.add_revision("wide0001", WIDEN_AGE)
    return project


@pytest.mark.postgresql
def test_rehearse_on_postgresql_reports_locks_and_rewrites_and_rolls_back(pending_on_postgresql):
    project = pending_on_postgresql
    before = project.state()

    code, output = project.db("upgrade", "--rehearse")

    assert code == 0, output
    assert "Rehearsal done: rolled back, the database was not changed" in output
    runs = re.findall(r"Running upgrade \S+ -> ([0-9a-z]+).* \.\.\.\n.*  done in \d+\.\d\d s",
                      output)
    assert runs == project.revisions()[1:], output
    assert output.count("rows: company 1000 -> 1000, employee 1000 -> 1000") == 3, output
    locks = re.findall(r"locks: (employee AccessExclusiveLock) \(\d+\.\d\d s\)", output)
    assert len(locks) == 3, output
    rewrites = re.findall(r"rewritten: (.*)", output)
    assert rewrites == ["none", "none", "employee"], output
    assert project.state() == before


@pytest.mark.postgresql
def test_round_trip_on_postgresql(pending_on_postgresql):
    project = pending_on_postgresql
    before = project.state()

    code, output = project.db("upgrade", "--round-trip")
    assert code == 0, output
    assert "every row is as the first upgrade left it" in output

    project.add_revision("lose0001", """
        def upgrade():
            pass


        def downgrade():
            op.execute("DELETE FROM employee WHERE id > 600")
    """)
    code, output = project.db("upgrade", "--round-trip")
    assert code == 1
    assert output.splitlines()[-1] == "Error: the round trip lost rows: employee (400 rows)", output
    assert project.state() == before


@pytest.mark.postgresql
def test_a_revision_that_needs_autocommit_is_named_and_refused(pending_on_postgresql):
    project = pending_on_postgresql
    project.add_revision("conc0001", """
        def upgrade():
            with op.get_context().autocommit_block():
                op.execute("CREATE INDEX CONCURRENTLY ix_employee_age ON employee (age)")


        def downgrade():
            op.execute("DROP INDEX ix_employee_age")
    """)
    before = project.state()

    code, output = project.db("upgrade", "--rehearse")

    assert code == 1, output
    assert output.splitlines()[-1].startswith(  # CONCURRENTLY in SQL text: no transaction holds it
        "Error: conc0001_test.py: it runs a statement that cannot run inside a transaction (in "
        "its autocommit_block)"), output
    assert project.state() == before
