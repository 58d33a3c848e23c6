"""Set-up mistakes get one line and change nothing: an unknown or malformed `-x` option
(refused before anything runs, naming the command's own keys), and a database URL whose
dialect or driver is not there (the package to install, never the password). Each
command's help lists its own -x keys. Through both CLIs."""
import sys

import pytest
from conftest import CLIS

AGE = "    age = db.Column(db.Integer, unique=False, nullable=True)\n"


@pytest.fixture(params=CLIS)
def cli(request):
    """Every guarantee here holds through both CLIs: the Manager and `flask db`."""
    return request.param


def one_error_line(output: str) -> str:
    """The output is a single `Error: ...` line: no traceback, nothing else."""
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    return lines[0]


def help_argv(project, command):
    """A command's help, as each CLI shows it: Flask-Script's `-?`, click's `--help`."""
    return [command, "--help" if project.cli == "flask" else "-?"]


@pytest.mark.parametrize("args, line", [
    (["upgrade", "-x", "yse"],
     "Error: unknown -x option 'yse' for upgrade; known: backup=off, lose=TABLE"),
    (["upgrade", "-x", "backup=of"],
     "Error: invalid -x option 'backup=of' for upgrade; known: backup=off, lose=TABLE"),
    (["upgrade", "-x", "backup=off", "-x", "foreign"],
     ("Error: unknown -x option 'foreign' for upgrade (restore takes it); "
      "known: backup=off, lose=TABLE")),
    (["downgrade", "-x", "yes=please"],
     "Error: invalid -x option 'yes=please' for downgrade; known: yes, backup=off, lose=TABLE"),
], ids=["typo", "bad-value", "another-commands-key", "flag-with-value"])
def test_a_wrong_x_option_is_refused_before_anything_runs(sqlite_project, args, line):
    project = sqlite_project
    database = project.path / "data.db"
    # No database yet: `db upgrade` would create one; refused, it creates nothing.
    code, output = project.db(*args)
    assert code != 0 and one_error_line(output) == line
    assert not database.exists()
    # A database at its first revision, with rows: as it was, and no snapshot taken.
    assert project.db("upgrade", project.revisions()[0], "-x", "backup=off")[0] == 0
    project.populate(10)
    before = project.state()
    code, output = project.db(*args)
    assert code != 0 and one_error_line(output) == line
    assert project.state() == before
    assert not (project.path / "backups").exists()


def test_migrate_takes_its_own_keys_and_refuses_others(sqlite_project):
    project = sqlite_project
    assert project.db("upgrade", "-x", "backup=off")[0] == 0
    project.edit_module(AGE, AGE + "    nickname = db.Column(db.String, nullable=True)\n")
    versions = project.path / "migrations" / "versions"
    files = set(versions.glob("*.py"))

    code, output = project.db("migrate", "-m", "nickname", "-x", "yes")
    assert code != 0 and one_error_line(output) == (
        "Error: unknown -x option 'yes' for migrate (downgrade, restore take it); "
        "known: rename=TABLE.OLD:NEW, names=convention")
    code, output = project.db("migrate", "-m", "nickname", "-x", "rename=company.cname")
    assert code != 0 and "invalid -x option 'rename=company.cname' for migrate" in output
    assert set(versions.glob("*.py")) == files  # nothing written

    code, output = project.db("migrate", "-m", "nickname", "-x", "names=convention",
                              "-x", "rename=company.clocation:location")
    assert code == 0, output
    written = set(versions.glob("*.py")) - files
    assert len(written) == 1 and "nickname" in written.pop().read_text()


@pytest.mark.parametrize("command, own, others", [
    ("upgrade", ["backup=off", "lose=TABLE"], ["yes:", "foreign", "rename=", "names="]),
    ("downgrade", ["yes:", "backup=off", "lose=TABLE"], ["foreign", "rename=", "names="]),
    ("migrate", ["rename=TABLE.OLD:NEW", "names=convention"], ["yes:", "backup=", "lose=",
                                                                "foreign"]),
    ("revision", ["rename=TABLE.OLD:NEW", "names=convention"], ["yes:", "backup=", "lose=",
                                                                 "foreign"]),
    ("restore", ["yes:", "foreign"], ["backup=", "lose=", "rename=", "names="]),
])
def test_each_command_help_lists_only_its_own_x_keys(sqlite_project, command, own, others):
    code, output = sqlite_project.db(*help_argv(sqlite_project, command))
    assert code == 0, output
    text = " ".join(output.split())  # as wrapped for the terminal, joined again
    assert all(key in text for key in own), text
    assert not [key for key in others if key in text], text


def test_postgres_url_gets_the_postgresql_hint(make_project):
    project = make_project(database_url="postgres://app:secret@127.0.0.1/app")
    code, output = project.db("upgrade")
    assert code != 0
    assert one_error_line(output) == (
        "Error: database URL postgres://app:***@127.0.0.1/app: use postgresql:// "
        "(SQLAlchemy 1.4 dropped the postgres name)")


def test_a_missing_driver_names_the_package_to_install(make_project):
    """mysqlclient (MySQLdb) and PyMySQL are not among the project's requirements."""
    project = make_project(database_url="mysql://u:secret@127.0.0.1/x")
    code, output = project.db("upgrade")
    assert code != 0
    line = one_error_line(output)
    assert "secret" not in output
    assert line == ("Error: database URL mysql://u:***@127.0.0.1/x: the mysqldb driver's module "
                    "MySQLdb is not installed: pip install PyMySQL and use mysql+pymysql://, or "
                    "pip install mysqlclient")


@pytest.mark.parametrize("args", [["upgrade"], ["downgrade"], ["stamp", "head"]])
def test_a_mysql_server_that_does_not_answer_is_one_line(make_project, args):
    """No server listens on port 1 (MySQL/MariaDB is supported: tests/test_mariadb.py)."""
    project = make_project(database_url="mysql+pymysql://u:secret@127.0.0.1:1/x")
    code, output = project.db(*args)
    assert code == 1
    assert one_error_line(output).startswith("Error: (2003, \"Can't connect to MySQL server")
    assert "secret" not in output


def test_an_async_driver_is_refused_with_the_sync_url(make_project):
    project = make_project(database_url="postgresql+asyncpg://u:secret@127.0.0.1/x")
    code, output = project.db("current")
    assert code != 0
    assert one_error_line(output) == (
        "Error: database URL postgresql+asyncpg://u:***@127.0.0.1/x: asyncpg is an async "
        "driver, which migrations cannot run on here: use postgresql:// (psycopg2)")


def test_the_db_commands_are_listed_when_the_driver_is_missing(make_project):
    """`flask db` must not vanish ("No such command 'db'") because the app's URL names a
    driver that is not installed: help needs no database."""
    project = make_project(database_url="mysql://u:secret@127.0.0.1/x")
    code, output = project.db("--help" if project.cli == "flask" else "-?")
    assert code == 0, output
    assert "upgrade" in output and "No such command" not in output


RUN_ANOTHER_WAY = """
from alembic import command
from migrate_example import app, migrate

with app.app_context():
    command.upgrade(migrate.get_config(x_arg=["backup=off", "yse"]), "head")
"""


@pytest.mark.parametrize("cli", ["manager"])  # no CLI: Alembic's own command, from a script
def test_a_run_started_another_way_checks_x_too(sqlite_project):
    """Alembic's command called directly (no `db` command to check first): the runner reads
    -x with the same parser, any command's key allowed, and refuses a typo."""
    project = sqlite_project
    assert project.db("upgrade", project.revisions()[0], "-x", "backup=off")[0] == 0
    project.populate(10)
    before = project.state()
    code, output = project.run(sys.executable, "-c", RUN_ANOTHER_WAY)
    assert code != 0
    assert ("MigrationError: unknown -x option 'yse'; known: backup=off, foreign, lose=TABLE, "
            "names=convention, rename=TABLE.OLD:NEW, yes") in output
    assert project.state() == before
