"""The tutorial's commands, end to end, on the committed history and from an empty folder."""
import sys

import pytest
from conftest import ROWS

HEAD_COLUMNS = {"employee": ["id", "name", "age"], "company": ["cid", "cname", "clocation"]}
SUBCOMMANDS = ["init", "revision", "migrate", "edit", "merge", "upgrade", "downgrade", "show",
               "history", "heads", "branches", "current", "stamp", "check", "repair", "restore", "lint"]


def snapshot(project, columns):
    """Rows of both tables, restricted to the given columns of each, ordered by key."""
    return {
        table: project.query(f"SELECT {', '.join(cols)} FROM {table} ORDER BY 1")
        for table, cols in columns.items()
    }


def common_columns(before, after):
    return {t: [c for c in before[t] if c in after[t]] for t in before}


def test_upgrade_from_another_directory_creates_head_schema(sqlite_project, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    code, output = sqlite_project.db("upgrade", cwd=elsewhere)

    assert code == 0, output
    assert (sqlite_project.path / "data.db").exists()
    assert not (elsewhere / "data.db").exists()
    assert {t: sqlite_project.columns(t) for t in HEAD_COLUMNS} == HEAD_COLUMNS
    inspector = sqlite_project.inspector()
    assert inspector.get_pk_constraint("employee")["name"] == "pk_employee"
    assert [u["name"] for u in inspector.get_unique_constraints("employee")] == ["uq_employee_name"]
    assert [u["name"] for u in inspector.get_unique_constraints("company")] == ["uq_company_cname"]
    assert sqlite_project.version() == sqlite_project.revisions()[-1]


def test_upgrade_creates_named_constraints(project):
    code, output = project.db("upgrade")

    assert code == 0, output
    inspector = project.inspector()
    assert inspector.get_pk_constraint("company")["name"] == "pk_company"
    assert {u["name"] for u in inspector.get_unique_constraints("employee")} == {"uq_employee_name"}
    assert {u["name"] for u in inspector.get_unique_constraints("company")} == {"uq_company_cname"}


def test_history_commands_show_the_three_revisions(project):
    first, second, head = project.revisions()
    assert project.db("upgrade")[0] == 0

    code, current = project.db("current")
    assert code == 0 and f"{head} (head)" in current
    code, heads = project.db("heads")
    assert code == 0 and f"{head} (head)" in heads
    code, history = project.db("history")
    assert code == 0
    assert f"{second} -> {head} (head), drop employee email" in history
    assert f"{first} -> {second}, add employee age" in history
    assert f"<base> -> {first}, create employee and company" in history


def test_current_notices_a_new_revision(project):
    head = project.revisions()[-1]
    assert project.db("upgrade")[0] == 0
    assert project.db("current") == (0, f"{head} (head)\n")

    project.add_revision("next0001", "def upgrade():\n    pass\n")

    assert project.db("current") == (0, f"{head}\n")  # no longer the head
    assert project.db("upgrade")[0] == 0
    assert project.db("current") == (0, "next0001 (head)\n")


def test_migrate_at_head_writes_nothing(project):
    assert project.db("upgrade")[0] == 0
    before = sorted(p.name for p in (project.path / "migrations" / "versions").glob("*.py"))

    code, output = project.db("migrate", "-m", "nothing")
    assert code == 0, output
    # One line, on every backend: not PostgreSQL's "Detected sequence ... assuming SERIAL"
    # per SERIAL column, which Alembic 1.20 logs at INFO (runner.QuietStart).
    assert output == "INFO  [alembic.env] No changes in schema detected.\n"
    code, output = project.db("revision", "--autogenerate", "-m", "nothing either")
    assert code == 0, output

    after = sorted(p.name for p in (project.path / "migrations" / "versions").glob("*.py"))
    assert after == before


def migrate_one_step(project, direction, target):
    """Run `db upgrade +1` or `db downgrade`; assert the rows survive in every column that
    exists on both sides of the step."""
    before_columns = {t: project.columns(t) for t in HEAD_COLUMNS}
    before = snapshot(project, before_columns)

    code, output = project.db(*direction)

    assert code == 0, output
    assert project.version() == target
    after_columns = {t: project.columns(t) for t in HEAD_COLUMNS}
    kept = common_columns(before_columns, after_columns)
    expected = {
        t: [tuple(row[before_columns[t].index(c)] for c in kept[t]) for row in before[t]]
        for t in kept
    }
    assert snapshot(project, kept) == expected


def test_populated_round_trip_keeps_every_row(project):
    revisions = project.revisions()
    assert project.db("upgrade")[0] == 0
    project.populate()

    for target in reversed(revisions[:-1]):
        migrate_one_step(project, ["downgrade", "-x", "yes"], target)

    # The email column came back NOT NULL UNIQUE, with a placeholder per row.
    emails = project.query("SELECT id, email FROM employee ORDER BY id")
    assert len(emails) == ROWS
    assert emails[0] == (1, "employee-1@restored.invalid")
    assert len({email for _, email in emails}) == ROWS
    inspector = project.inspector()
    email = next(c for c in inspector.get_columns("employee") if c["name"] == "email")
    assert email["nullable"] is False
    assert "uq_employee_email" in {u["name"] for u in inspector.get_unique_constraints("employee")}

    code, output = project.db("downgrade", "base", "-x", "yes")
    assert code == 0, output
    assert project.version() is None
    assert project.tables() - {"migration_database"} == {"alembic_version", "migration_checksums"}

    # Back up from the first revision, with rows written in that revision's shape.
    assert project.db("upgrade", revisions[0])[0] == 0
    project.populate()
    for target in revisions[1:]:
        migrate_one_step(project, ["upgrade", "+1"], target)
    assert project.query("SELECT count(*) FROM employee") == [(ROWS,)]
    assert project.query("SELECT count(*) FROM company") == [(ROWS,)]


def run_cleanly(project, *steps):
    """Run tutorial steps; each succeeds with no traceback and no Python warning
    (DeprecationWarning, SAWarning...). Our own data-loss notices are upper-case WARNING."""
    for step in steps:
        code, output = project.db(*step)
        assert code == 0, output
        assert "Traceback" not in output and "Warning" not in output, output


def test_tutorial_replays_from_an_empty_folder(empty_project):
    project = empty_project
    email = "    email = db.Column(db.String, unique=True, nullable=False)\n"
    age = "    age = db.Column(db.Integer, unique=False, nullable=True)\n"
    project.edit_module(age, email)  # the tutorial's first models
    run_cleanly(project, ["init"], ["migrate", "-m", "create tables"], ["upgrade"])
    project.populate()

    project.edit_module(email, email + age)
    run_cleanly(project, ["migrate", "-m", "add age"], ["upgrade"])
    assert project.columns("employee") == ["id", "name", "email", "age"]

    project.edit_module(email, "")
    run_cleanly(project, ["migrate", "-m", "drop email"], ["upgrade"])

    assert project.columns("employee") == ["id", "name", "age"]
    assert project.query("SELECT count(*) FROM employee") == [(ROWS,)]
    versions = list((project.path / "migrations" / "versions").glob("*.py"))
    assert len(versions) == 3
    assert all("batch_alter_table" in p.read_text() for p in versions if "create" not in p.name)


def test_database_url_overrides_the_default(sqlite_project):
    other = sqlite_project.path / "other.db"

    code, output = sqlite_project.db("upgrade", env={"DATABASE_URL": f"sqlite:///{other}"})

    assert code == 0, output
    assert other.exists()
    assert not (sqlite_project.path / "data.db").exists()


def test_flask_db_runs_on_the_same_app(project):
    head = project.revisions()[-1]
    assert project.db("upgrade")[0] == 0

    code, output = project.run(sys.executable, "-m", "flask", "db", "current",
                               env={"FLASK_APP": "migrate_example.py"})

    assert code == 0, output
    assert f"{head} (head)" in output


def test_db_help_lists_every_subcommand(sqlite_project):
    code, output = sqlite_project.db("--help")

    assert code == 0
    for name in SUBCOMMANDS:
        assert f"    {name} " in output


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_help(sqlite_project, name):
    code, output = sqlite_project.db(name, "--help")

    assert code == 0, output
    assert "usage:" in output


def test_users_own_commands_run(sqlite_project):
    sqlite_project.edit_module('\nif __name__ == "__main__":', '''

@manager.command
def greet(name="world", shout=False):
    """Say hello."""
    text = f"hello {name}"
    print(text.upper() if shout else text)


@manager.option("-t", "--table", dest="table", default="employee", help="table to count")
def count(table):
    """Count the rows of a table."""
    print(f"{table}: {db.session.execute(db.text(f'SELECT count(*) FROM {table}')).scalar()}")

if __name__ == "__main__":''')
    assert sqlite_project.db("upgrade")[0] == 0

    code, output = sqlite_project.run(sys.executable, "migrate_example.py", "greet", "--name", "you")
    assert (code, output) == (0, "hello you\n")
    code, output = sqlite_project.run(sys.executable, "migrate_example.py", "greet", "--shout")
    assert (code, output) == (0, "HELLO WORLD\n")
    code, output = sqlite_project.run(sys.executable, "migrate_example.py", "count", "-t", "company")
    assert (code, output) == (0, "company: 0\n")
