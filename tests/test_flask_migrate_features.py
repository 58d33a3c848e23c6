"""Flask-Migrate 4's features, on both profiles and through both CLIs, with the package's
guarantees: `@migrate.configure` callbacks, `Migrate(command=...)`, the group's
`-d DIR -x KEY=VAL` before the command, `-x` on every command, `list-templates`,
`init --template`, `stamp --purge` and `check`."""
import shutil
import sys

import pytest
from conftest import CLIS

from safe_migrate.cli import COMMANDS

TEMPLATES = ["flask", "flask-multidb"]
AGE = "    age = db.Column(db.Integer, unique=False, nullable=True)\n"
NOTE_REVISION = """
    def upgrade():
        op.create_table("note", sa.Column("id", sa.Integer, primary_key=True))


    def downgrade():
        op.drop_table("note")
"""
CALLBACKS = '''

@migrate.configure
def more_versions(config):
    """Revisions also in extra_versions/, beside migrations/."""
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", os.pathsep.join(
        [str(BASE_DIR / "migrations" / "versions"), str(BASE_DIR / "extra_versions")]))
    return config


@migrate.configure
def name_files(config):
    """Revision files named custom_<id>.py."""
    config.set_main_option("file_template", "custom_%%(rev)s")
    return config
'''
MAIN = '\n\nif __name__ == "__main__":\n    manager.run()\n'


@pytest.fixture(params=CLIS)
def cli(request):
    """Every feature here works through both CLIs: the Manager and `flask db`."""
    return request.param


def add_to_module(project, text: str) -> None:
    """Add code to migrate_example.py before its `manager.run()`."""
    project.edit_module(MAIN, text + MAIN)


def snapshots(project) -> list:
    return sorted((project.path / "backups").glob("*.db"))


def test_configure_callbacks_shape_every_commands_config(sqlite_project):
    project = sqlite_project
    head = project.revisions()[-1]
    assert project.db("heads") == (0, f"{head} (head)\n")  # the revision cache is written
    add_to_module(project, CALLBACKS)
    (project.path / "extra_versions").mkdir()
    project.add_revision("feed01", NOTE_REVISION).rename(
        project.path / "extra_versions" / "feed01_note.py")

    # The callbacks' version location, not the cached answer for migrations/ alone.
    assert project.db("heads") == (0, "feed01 (head)\n")
    code, output = project.db("upgrade")
    assert code == 0 and f"Running upgrade {head} -> feed01 ..." in output, output
    assert project.version() == "feed01" and "note" in project.tables()
    # Run through the package: the checksum of the callback's revision is recorded.
    assert project.query("SELECT revision FROM migration_checksums WHERE revision = 'feed01'")
    # A new revision goes where its head is, named by the callback's file_template.
    code, output = project.db("revision", "-m", "more", "--rev-id", "feed02")
    assert code == 0, output
    assert (project.path / "extra_versions" / "custom_feed02.py").is_file()
    assert project.db("heads") == (0, "feed02 (head)\n")


def run_group(project, group: str, *args):
    """A command through the app's migration group under another name."""
    if project.cli == "flask":
        argv = [sys.executable, "-m", "flask", group, *args]
    else:
        argv = [sys.executable, project.module, group, *args]
    return project.run(*argv, env={"FLASK_APP": "migrate_example.py"})


def test_migrate_command_names_the_group(sqlite_project):
    project = sqlite_project
    project.edit_module('directory=BASE_DIR / "migrations")',
                        'directory=BASE_DIR / "migrations", command="database")')
    project.edit_module('manager.add_command("db", MigrateCommand)',
                        'manager.add_command("database", MigrateCommand)')
    head = project.revisions()[-1]

    code, output = run_group(project, "database", "upgrade")
    assert code == 0 and project.version() == head, output
    assert run_group(project, "database", "current") == (
        0, f"{head} (head)\n")
    code, output = run_group(project, "database", "upgrade", "--help")
    first = output.splitlines()[0]
    if project.cli == "flask":
        assert first == "Usage: python -m flask database upgrade [OPTIONS] [REVISION]", output
    else:
        assert first.startswith("usage: migrate_example.py database upgrade [-?] "), output
    assert run_group(project, "database", "upgarde") == (
        2, 'Error: no command "upgarde". Did you mean "upgrade"?\n')
    code, output = run_group(project, "db", "current")  # no `db` group any more
    assert code == 2 and (
        "No such command 'db'" in output if project.cli == "flask"
        else "invalid choice: 'db'" in output), output


def test_group_options_come_before_the_command(sqlite_project):
    project = sqlite_project
    shutil.move(project.path / "migrations", project.path / "other")

    code, output = project.db("-d", "other", "-x", "backup=off", "upgrade")
    assert code == 0, output
    project.populate(10)
    code, output = project.db("-d", "other", "-x", "backup=off", "downgrade", "-1")
    assert code == 0, output
    assert snapshots(project) == []  # the group's -x reached the command
    code, output = project.db("-d", "other", "upgrade")
    assert code == 0 and len(snapshots(project)) == 1, output  # without it: a snapshot
    # The group's -x and the command's together; a command's own -d wins over the group's.
    code, output = project.db("-d", "nowhere", "-x", "yes", "downgrade", "-d", "other",
                              "-x", "backup=off", "base")
    assert code == 0 and project.version() is None, output
    assert len(snapshots(project)) == 1
    # Checked as the command's own: a typo, or a key the command does not take, is refused.
    assert project.db("-d", "other", "-x", "yse", "upgrade") == (
        1, "Error: unknown -x option 'yse' for upgrade; known: backup=off, lose=TABLE\n")
    assert project.db("-d", "other", "-x", "backup=off", "current") == (
        1, ("Error: unknown -x option 'backup' for current (upgrade, downgrade take it); "
           "known: none\n"))
    assert project.version() is None


def files(project) -> list:
    return sorted(str(p.relative_to(project.path)) for p in project.path.rglob("*")
                  if "__pycache__" not in p.parts)


def minimal_args(name: str) -> list:
    """What a command needs besides its options."""
    return {"merge": ["heads"], "restore": ["backups/none.db"]}.get(name, [])


@pytest.mark.parametrize("name", list(COMMANDS))
def test_x_on_every_command(sqlite_project, name):
    project = sqlite_project
    before = files(project)
    code, output = project.db(name, "-x", "nonsense", *minimal_args(name))
    known = {"upgrade": "backup=off, lose=TABLE",
             "downgrade": "yes, backup=off, lose=TABLE",
             "revision": "rename=TABLE.OLD:NEW, names=convention",
             "migrate": "rename=TABLE.OLD:NEW, names=convention",
             "restore": "yes, foreign"}.get(name, "none")
    assert (code, output) == (
        1, f"Error: unknown -x option 'nonsense' for {name}; known: {known}\n")
    assert files(project) == before  # nothing ran: no database, no new file


def test_list_templates(sqlite_project):
    assert sqlite_project.db("list-templates") == (0, (
        "Available templates:\n\n"
        "flask - Single-database configuration for Flask, run through safe_migrate (see "
        "env.py).\n"
        "flask-multidb - Multi-database configuration for Flask (SQLALCHEMY_BINDS), run "
        "through safe_migrate (see env.py).\n"))


def test_init_template(make_project):
    project = make_project("tutorial", with_migrations=False)
    migrations = project.path / "migrations"
    templates = project.path / "safe_migrate" / "templates"

    assert project.db("init", "--template", "nosuch") == (
        1, ("Error: no template 'nosuch'; the templates are flask, flask-multidb (nothing was "
           "written)\n"))
    no_binds = ("Error: --multidb needs SQLALCHEMY_BINDS in the app's config; an app with one "
                "database takes `db init`\n")
    assert project.db("init", "--template", "flask-multidb") == (1, no_binds)
    assert project.db("init", "--multidb") == (1, no_binds)
    assert project.db("init", "--multidb", "--template", "flask") == (
        1, ("Error: --multidb is --template flask-multidb, not flask: give one (nothing was "
           "written)\n"))
    assert not migrations.exists()

    code, output = project.db("init", "-t", "flask", "--package")
    assert code == 0, output
    assert (migrations / "env.py").read_text() == (templates / "flask" / "env.py").read_text()
    assert (migrations / "__init__.py").is_file()
    assert (migrations / "versions" / "__init__.py").is_file()

    shutil.rmtree(migrations)
    project.edit_module('app.config["SQLALCHEMY_TRACK_MODIFICATIONS"] = False',
                        'app.config["SQLALCHEMY_TRACK_MODIFICATIONS"] = False\n'
                        'app.config["SQLALCHEMY_BINDS"] = {"users": '
                        'f"sqlite:///{BASE_DIR / \'users.db\'}"}')
    code, output = project.db("init", "--template", "flask-multidb")
    assert code == 0, output
    assert (migrations / "env.py").read_text() == (
        templates / "flask-multidb" / "env.py").read_text()
    shutil.rmtree(migrations)
    code, output = project.db("init", "--multidb")  # as before
    assert code == 0, output
    assert (migrations / "env.py").read_text() == (
        templates / "flask-multidb" / "env.py").read_text()


def test_stamp_purge(sqlite_project):
    project = sqlite_project
    head = project.revisions()[-1]
    assert project.db("upgrade")[0] == 0
    project.execute("UPDATE alembic_version SET version_num = 'deadbeef'")

    code, output = project.db("stamp", "head")
    assert code == 1 and "Can't locate revision identified by 'deadbeef'" in output, output
    # A destination that is not there is refused before the purge (which Alembic commits
    # in a transaction of its own): the table is as it was.
    code, output = project.db("stamp", "--purge", "nosuch")
    assert code == 1 and "Can't locate revision identified by 'nosuch'" in output, output
    assert project.query("SELECT version_num FROM alembic_version") == [("deadbeef",)]

    code, output = project.db("stamp", "--purge", "head")
    assert code == 0, output
    assert project.query("SELECT version_num FROM alembic_version") == [(head,)]
    assert project.db("upgrade") == (0, f"Already at head ({head}).\n")
    assert project.db("check") == (0, ("The models, the migrations' head and the database "
                                      "agree.\n"))


def test_check_exits_1_on_changes_through_the_group_options(sqlite_project):
    project = sqlite_project
    head = project.revisions()[-1]
    shutil.move(project.path / "migrations", project.path / "other")
    assert project.db("-d", "other", "upgrade")[0] == 0
    agree = (0, "The models, the migrations' head and the database agree.\n")
    assert project.db("-d", "other", "check") == agree
    project.edit_module(AGE, AGE + "    email = db.Column(db.String, nullable=True)\n")

    assert project.db("-d", "other", "check") == (
        1, "column employee.email: in the models, not in the database\n")
    assert project.db("-d", "other", "migrate", "-m", "email", "--rev-id", "e0001")[0] == 0
    assert project.db("-d", "other", "check") == (1, (
        f"database at {head}, migrations' head is e0001: run `db upgrade`\n"
        "column employee.email: in the models, not in the database\n"))
    assert project.db("-d", "other", "upgrade")[0] == 0
    assert project.db("-d", "other", "check") == agree
