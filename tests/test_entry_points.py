"""The same app and the same guarantees through every entry point: Flask-Script's Manager,
`flask db`, an env.py from elsewhere, a user's own command module, newer Pythons."""
import os
import signal
import sys
import textwrap
from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import CLIS, sqlalchemy_parse_error

SLOW_REVISION = """
    def upgrade():
        op.create_table("slow_runs", sa.Column("id", sa.Integer, primary_key=True))
        with open({fifo!r}, "w") as started:  # tells the test the revision is running
            started.write("running")
        time.sleep(120)


    def downgrade():
        op.drop_table("slow_runs")
"""


@pytest.fixture(params=CLIS)
def cli(request):
    return request.param


def test_flask_db_is_the_apps_own_group(sqlite_project):
    code, output = sqlite_project.run(sys.executable, "-m", "flask", "db", "--help",
                                      env={"FLASK_APP": "migrate_example.py"})
    assert code == 0, output
    for ours in ("check", "repair", "restore", "lint"):
        assert f"  {ours} " in output, output


@pytest.mark.parametrize("name, text, option", [
    ("upgrade", "snapshotted first", "--x-arg"),
    ("downgrade", "-x yes answers", "--x-arg"),
    ("migrate", "Alias for 'revision --autogenerate'", "--x-arg"),
    ("revision", "asking about renames", "--autogenerate"),
    ("history", "the dates they were applied", "--applied"),
    ("current", "Display the current revision", "--verbose"),
    ("check", "list each difference on a line", "--directory"),
    ("repair", "Record the checksums", "--directory"),
    ("restore", "Put a snapshot from backups/ back", "snapshot"),
    ("stamp", "how an existing database is adopted", "--sql"),
])
def test_each_command_has_its_own_help(project, name, text, option):
    code, output = project.db(name, "--help")
    assert code == 0, output
    assert text in " ".join(output.split()), output
    assert option in output, output


def test_a_one_line_error_is_exactly_one_line(project):
    typo = project.path / "dta.db"
    code, output = project.db("upgrade", "--sql", env={"DATABASE_URL": f"sqlite:///{typo}"})
    assert code == 1
    assert output == ("Error: upgrade --sql is not available on SQLite: batch migrations copy "
                      "tables, and must read their definitions from the live database; run it "
                      "without --sql\n")
    assert not typo.exists()


def test_a_malformed_url_never_prints_its_password(project):
    code, output = project.db("current", env={"DATABASE_URL": "postgresql//user:secret@host/x"})
    assert code == 1
    said = sqlalchemy_parse_error("postgresql//user:secret@host/x")  # 1.4 quotes the URL
    assert output == ("Error: DATABASE_URL is not a database URL "
                      f"({said.replace(':secret@', ':***@')})\n")
    assert "secret" not in output


def test_migrate_traceback_shows_the_traceback(project):
    code, output = project.db("upgrade", "nosuchrev", env={"MIGRATE_TRACEBACK": "1"})
    assert code == 1
    assert "Traceback (most recent call last)" in output
    assert "CommandError: Can't locate revision identified by 'nosuchrev'" in output


def test_ctrl_c_is_one_line_and_rolls_the_revision_back(project):
    assert project.db("upgrade")[0] == 0
    fifo = project.path / "started"
    os.mkfifo(fifo)
    project.add_revision("slow0001", SLOW_REVISION.format(fifo=str(fifo)))
    run = project.db_started("upgrade", "-x", "backup=off")
    with open(fifo) as started:  # returns once the revision is inside its transaction
        assert started.read() == "running"
    run.send_signal(signal.SIGINT)
    _, errors = run.communicate(timeout=60)

    assert run.returncode == 130
    assert errors.splitlines()[-1] == (
        "Error: interrupted during the upgrade of slow0001: it was rolled back; no revision "
        "of this run had been applied before it")
    assert "Traceback" not in errors
    assert project.version() == project.revisions()[-2]
    assert "slow_runs" not in project.tables()


def test_an_env_py_that_bypasses_the_package_is_refused(project):
    import flask_migrate

    first = project.revisions()[0]
    assert project.db("upgrade", first)[0] == 0
    before = project.state()
    stock = Path(flask_migrate.__file__).parent / "templates" / "flask" / "env.py"
    (project.path / "migrations" / "env.py").write_text(stock.read_text())

    code, output = project.db("upgrade", "-x", "backup=off")

    assert code == 1
    assert output.splitlines()[-1].startswith(
        "Error: migrations/env.py does not run through safe_migrate, so nothing was applied")
    assert project.state() == before


def test_a_users_command_module_can_import_the_app(sqlite_project):
    # The classic layout: commands.py imports the app module, which imports commands.py
    # from its __main__ block, so the module runs twice in one process.
    (sqlite_project.path / "commands.py").write_text(textwrap.dedent("""
        from migrate_example import db, manager


        @manager.command
        def tables():
            print(sorted(db.engine.table_names()))
    """))
    sqlite_project.edit_module('if __name__ == "__main__":\n',
                               'if __name__ == "__main__":\n    import commands  # noqa: F401\n')

    code, output = sqlite_project.db("upgrade")
    assert code == 0, output
    code, output = sqlite_project.db("current")
    assert (code, output.strip()) == (0, f"{sqlite_project.revisions()[-1]} (head)")


SIMULATE_314 = """
    # Python 3.14 removed these; delete them here, at start-up, to run as 3.14 would.
    import ast
    import pkgutil

    for name in ("get_loader", "find_loader"):
        if hasattr(pkgutil, name):
            delattr(pkgutil, name)
    REMOVED = ("Str", "Num", "Bytes", "NameConstant", "Ellipsis")
    for name in REMOVED:
        if name in vars(ast):
            delattr(ast, name)
    # 3.12 and 3.13 answer them from the module's __getattr__ (with a DeprecationWarning).
    deprecated = vars(ast).get("__getattr__")
    if deprecated is not None:
        def __getattr__(name, deprecated=deprecated):
            if name in REMOVED:
                raise AttributeError(f"module 'ast' has no attribute {name!r}")
            return deprecated(name)

        ast.__getattr__ = __getattr__
"""


@pytest.fixture
def as_python_314(tmp_path):
    """An environment whose Python lacks what 3.14 removed (a sitecustomize on PYTHONPATH)."""
    site = tmp_path / "site314"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(SIMULATE_314))
    return {"PYTHONPATH": str(site)}


def test_the_314_simulation_breaks_flask_as_the_tutorial_uses_it(sqlite_project, as_python_314):
    code, output = sqlite_project.run(
        sys.executable, "-c", "import ast, pkgutil; print(hasattr(pkgutil, 'get_loader'), "
        "hasattr(ast, 'Str'))", env=as_python_314)
    assert (code, output) == (0, "False False\n")
    code, output = sqlite_project.run(sys.executable, "-c", "import flask; flask.Flask('x')",
                                      env=as_python_314)
    if version("flask").startswith("1."):  # the legacy profile: Flask 1.1 needs them
        assert code == 1 and "get_loader" in output, output
    else:  # Flask 2.2+ (the modern profile) does not use them
        assert (code, output) == (0, ""), output


def test_every_command_runs_without_what_314_removed(project, as_python_314):
    head = project.revisions()[-1]
    for args in (["upgrade"], ["check"], ["downgrade", "-x", "yes"], ["upgrade"]):
        code, output = project.db(*args, env=as_python_314)
        assert code == 0, output
    code, output = project.db("current", env=as_python_314)
    assert (code, output.strip().splitlines()[-1]) == (0, f"{head} (head)")


@pytest.mark.parametrize("args", [["upgrade"], ["current"], ["check"]])
def test_no_deprecation_warnings(sqlite_project, args):
    assert sqlite_project.db("upgrade")[0] == 0
    code, output = sqlite_project.run(sys.executable, "-W", "error::DeprecationWarning",
                                      "migrate_example.py", "db", *args)
    assert code == 0, output
    assert "Warning" not in output


EXIT_FREEZE = """
import atexit, gc, sys
before = gc.get_freeze_count()  # not 0 on every Python: 3.12.1 starts with objects frozen
atexit.register(lambda: print("frozen" if gc.get_freeze_count() > before else "collected"))
import migrate_example
cli, sys.argv = sys.argv[1], ["migrate_example.py", "db", "current"]
if cli == "flask":
    from flask.cli import main
    main()
elif cli == "manager":
    migrate_example.manager.run()
"""


@pytest.mark.parametrize("cli, expected", [("manager", "frozen"), ("flask", "frozen"),
                                           ("none", "collected")])
def test_only_a_command_skips_the_collection_at_exit(sqlite_project, cli, expected):
    # What it is worth is in bench/RESULTS.md; here, that an app importing the package keeps
    # Python's collector as it is.
    assert sqlite_project.db("upgrade")[0] == 0
    code, output = sqlite_project.run(sys.executable, "-c", EXIT_FREEZE, cli,
                                      env={"FLASK_APP": "migrate_example.py"})
    assert (code, output.splitlines()[-1]) == (0, expected), output


def test_migrate_and_check_through_either_cli(project):
    assert project.db("upgrade")[0] == 0
    project.edit_module("    clocation = db.Column(db.String, unique=False, nullable=False)\n",
                        "    clocation = db.Column(db.String, unique=False, nullable=False)\n"
                        "    phone = db.Column(db.String, nullable=True)\n")

    assert project.db("check") == (1, "column company.phone: in the models, not in the database\n")
    code, output = project.db("migrate", "-m", "add phone")
    assert code == 0, output
    assert project.db("upgrade")[0] == 0
    assert "phone" in project.columns("company")
    assert project.db("check") == (
        0, "The models, the migrations' head and the database agree.\n")


def test_a_changed_added_or_removed_revision_file_is_noticed(project):
    assert project.db("upgrade")[0] == 0
    assert project.db("upgrade") == (0, f"Already at head ({project.revisions()[-1]}).\n")
    versions = project.path / "migrations" / "versions"
    head = project.revisions()[-1]

    # Added: the next upgrade applies it, and current shows it.
    added = project.add_revision(
        "next0001", "def upgrade():\n    pass\n\n\ndef downgrade():\n    pass\n")
    code, output = project.db("upgrade", "-x", "backup=off")
    assert code == 0 and "-> next0001" in output, output
    assert project.db("current") == (0, "next0001 (head)\n")

    # Changed, same size: an applied revision's checksum still tells.
    text = added.read_text()
    added.write_text(text.replace("pass", "None"))
    code, output = project.db("upgrade")
    assert code == 1 and "next0001_test.py changed after revision next0001 was applied" in output

    # Removed: back to the previous head, as Alembic says.
    added.write_text(text)
    assert project.db("downgrade", "-x", "backup=off")[0] == 0
    added.unlink()
    assert project.db("current") == (0, f"{head} (head)\n")
    assert project.db("upgrade") == (0, f"Already at head ({head}).\n")
    assert not list(versions.glob("next0001*"))


def test_read_only_commands_answer_as_alembic_does_without_loading_it(project):
    assert project.db("upgrade")[0] == 0
    head = project.revisions()[-1]
    for rev_id in ("branch01", "branch02"):
        project.add_revision(rev_id, "def upgrade():\n    pass\n\n\ndef downgrade():\n"
                                     "    pass\n", down_revision=head)
    for merged in (False, True):
        # Each pair: the cached answer, and the same question put so that Alembic answers.
        for cached, alembic in ((["heads"], ["heads", "--resolve-dependencies"]),
                                (["history"], ["history", "-r", "base:heads"])):
            assert project.db(*cached) == project.db(*alembic)
        if not merged:
            assert project.db("merge", "heads", "-m", "join", "--rev-id", "join0001",
                              "--branch-label", "joined")[0] == 0
    assert project.db("upgrade", "-x", "backup=off")[0] == 0

    for args in (["current"], ["heads"], ["history"], ["upgrade"]):
        argv = project.db_argv(*args)
        code, output = project.run(argv[0], "-X", "importtime", *argv[1:],
                                   env={"FLASK_APP": "migrate_example.py"})
        assert code == 0, output
        assert " alembic" not in output and " mako" not in output, args


def test_the_other_alembic_commands_pass_through(project):
    head = project.revisions()[-1]
    assert project.db("upgrade")[0] == 0

    code, output = project.db("show", "head")
    assert code == 0 and f"Rev: {head} (head)" in output, output
    assert project.db("branches") == (0, "")
    code, output = project.db("current", "--verbose")
    assert code == 0 and f"Rev: {head} (head)" in output, output
    code, output = project.db("edit", head, env={"EDITOR": "true"})
    assert code == 0, output

    for rev_id in ("branch01", "branch02"):
        project.add_revision(rev_id, "def upgrade():\n    pass\n", down_revision=head)
    code, output = project.db("merge", "heads", "-m", "join", "--rev-id", "join0001")
    assert code == 0, output
    assert project.db("heads") == (0, "join0001 (head)\n")
    code, output = project.db("init", "--multidb")
    assert code == 1
    assert output == ("Error: --multidb needs SQLALCHEMY_BINDS in the app's config; an app with "
                      "one database takes `db init`\n")
