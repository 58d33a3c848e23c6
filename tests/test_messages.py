"""Every command says what it did, once: a no-op says it is one, the usage lines name the
command as it is typed, and a mistyped command gets "did you mean". Through both CLIs."""
import sqlite3
from contextlib import closing

import pytest
from conftest import CLIS, file_hash

HEAD = "edee0e2ae9aa"
NOT_UNDER_MIGRATIONS = ("No alembic_version table: this database is not under migrations "
                        "(see db stamp).\n")


@pytest.fixture(params=CLIS)
def cli(request):
    return request.param


def test_upgrade_at_head_says_so(sqlite_project):
    assert sqlite_project.db("upgrade")[0] == 0

    assert sqlite_project.db("upgrade") == (0, f"Already at head ({HEAD}).\n")  # the cache
    # A named revision takes Alembic's path, which says the same.
    assert sqlite_project.db("upgrade", HEAD) == (0, f"Already at head ({HEAD}).\n")


def test_a_rehearsal_of_nothing_copies_nothing(sqlite_project, tmp_path):
    assert sqlite_project.db("upgrade")[0] == 0
    database = sqlite_project.path / "data.db"
    before = file_hash(database)
    scratch = tmp_path / "tmp"  # where a rehearsal would copy the database
    scratch.mkdir()

    result = sqlite_project.db("upgrade", "--rehearse", env={"TMPDIR": str(scratch)})

    assert result == (0, "Nothing pending: no rehearsal.\n")
    assert sqlite_project.db("upgrade", "--rehearse", HEAD, env={"TMPDIR": str(scratch)}) \
        == result
    assert list(scratch.iterdir()) == []
    assert file_hash(database) == before


def test_downgrade_at_base_says_so_and_rehearses_nothing(sqlite_project, tmp_path):
    assert sqlite_project.db("upgrade")[0] == 0
    assert sqlite_project.db("downgrade", "base", "-x", "yes", "-x", "backup=off")[0] == 0
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    at_base = (1, "Error: nothing to downgrade: the database is at base\n")

    assert sqlite_project.db("downgrade") == at_base
    assert sqlite_project.db("downgrade", "--rehearse", env={"TMPDIR": str(scratch)}) == at_base
    assert list(scratch.iterdir()) == []


def test_current_on_a_database_not_under_migrations(sqlite_project):
    with closing(sqlite3.connect(sqlite_project.path / "data.db")) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY)")

    assert sqlite_project.db("current") == (0, NOT_UNDER_MIGRATIONS)
    assert sqlite_project.db("current", "--verbose") == (0, NOT_UNDER_MIGRATIONS)


def test_current_at_base(sqlite_project):
    assert sqlite_project.db("upgrade")[0] == 0
    assert sqlite_project.db("downgrade", "base", "-x", "yes", "-x", "backup=off")[0] == 0

    assert sqlite_project.db("current") == (0, "At base: no revision is applied.\n")


def test_the_tutorial_says_each_line_once(make_project):
    empty_project = make_project("tutorial", with_migrations=False)
    database = empty_project.path / "data.db"
    assert empty_project.db("init")[0] == 0

    code, output = empty_project.db("migrate", "-m", "first")
    assert code == 0, output
    assert output.count(f"No database at {database} yet") == 1, output

    code, output = empty_project.db("upgrade")
    assert code == 0, output
    assert output.count(f"Creating new database at {database}") == 1, output


def test_each_subcommand_usage_names_the_command_as_typed(sqlite_project):
    code, output = sqlite_project.db("upgrade", "--help")

    assert code == 0, output
    first = output.splitlines()[0]
    if sqlite_project.cli == "manager":
        assert first.startswith("usage: migrate_example.py db upgrade [-?] "), output
    else:
        assert first == "Usage: python -m flask db upgrade [OPTIONS] [REVISION]", output


@pytest.mark.parametrize("cli", ["flask"])
def test_flask_help_has_no_stray_gaps(make_project):
    project = make_project()
    code, output = project.db("upgrade", "--help")

    assert code == 0, output
    description, options = output.split("\nOptions:\n")
    assert "  " not in " ".join(line.strip() for line in description.splitlines()[1:])
    assert "" not in options.rstrip("\n").splitlines(), output  # no empty line between options
    code, output = project.db("--help")
    assert code == 0, output
    commands = output.split("\nCommands:\n")[1].rstrip("\n").splitlines()
    assert all(line.startswith("  ") and line.split()[0].replace("-", "").isalpha()
               for line in commands), output


def test_a_mistyped_command_gets_did_you_mean(sqlite_project):
    assert sqlite_project.db("upgarde") == (
        2, 'Error: no command "upgarde". Did you mean "upgrade"?\n')
    assert sqlite_project.db("curent", "--help") == (
        2, 'Error: no command "curent". Did you mean "current"?\n')
    assert not (sqlite_project.path / "data.db").exists()


def test_close_command_is_difflibs_closest():
    from safe_migrate.usage import close_command

    commands = ["upgrade", "downgrade", "current", "heads", "history"]
    assert close_command("upgarde", commands) == "upgrade"
    assert close_command("hist", commands) == "history"
    assert close_command("frobnicate", commands) is None
