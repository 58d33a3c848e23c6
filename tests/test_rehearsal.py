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
    times = re.findall(r"Running upgrade \S+ -> (\S+), .* \.\.\. \d+\.\d\d s", output)
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


def test_rehearse_says_it_needs_a_sqlite_file(make_project):
    project = make_project(database_url="postgresql://nobody@127.0.0.1:1/x")

    code, output = project.db("upgrade", "--rehearse")

    assert code == 1
    assert output == ("Error: --rehearse works on SQLite files only so far; on PostgreSQL, "
                      "rehearse on a restored copy of the database\n")
