"""An adoption path that cannot be half-followed: models without named constraints are
noticed by `db init` and `db check` with the edit to make, `db env` writes the package's
env.py into an existing project, and the app's own Alembic hooks (Migrate(app, db,
include_object=...)) are obeyed by every command, `db check` included."""
import filecmp
import sys

import pytest
from conftest import CLIS, MODERN, ROOT

from safe_migrate.adoption import TEMPLATE_ENV, naming_problem

# The tutorial's app as published, on the project's data.db by its absolute path (Flask-SQLAlchemy
# 3 would put a relative SQLite path under instance/).
TUTORIAL = (ROOT / "bench" / "tutorial_app.py").read_text().replace(
    '"sqlite:///data.db"', 'os.environ.get("DATABASE_URL", "sqlite:///" + os.path.join('
                           'os.path.dirname(os.path.abspath(__file__)), "data.db"))').replace(
    "db = SQLAlchemy(app)", 'app.config["SQLALCHEMY_TRACK_MODIFICATIONS"] = False\n'
                            "db = SQLAlchemy(app)")
if MODERN:  # flask-script-ng; Flask-Migrate 4.1 has no MigrateCommand: its `db` is `flask db`
    TUTORIAL = TUTORIAL.replace("from flask_script import", "from flask_script_ng import")
    BARE = "import os\n" + TUTORIAL.replace("import Migrate, MigrateCommand", "import Migrate"
                                           ).replace('manager.add_command("db", MigrateCommand)\n', "")
else:
    BARE = "import os\n" + TUTORIAL
# The half-followed adoption: the import switched (and the Manager's `db`), `SQLAlchemy(app)` kept.
HALF = "import os\n" + TUTORIAL.replace("from flask_migrate import", "from safe_migrate import")
# The whole adoption: `metadata` imported too, and given to SQLAlchemy.
WHOLE = HALF.replace("import Migrate, MigrateCommand", "import Migrate, MigrateCommand, metadata"
                     ).replace("db = SQLAlchemy(app)", "db = SQLAlchemy(app, metadata=metadata())")
NAMING_LINE = (
    "the models' MetaData names no constraints (its naming convention lacks uq, fk; unnamed: "
    "company unique (cname), employee unique (name)), so Alembic can neither compare nor drop "
    "them: add `from safe_migrate import metadata` and write "
    "`db = SQLAlchemy(app, metadata=metadata())`")


@pytest.fixture(params=CLIS)
def cli(request):
    """Every guarantee here holds through both CLIs: the Manager and `flask db`."""
    return request.param


def app_project(make_project, text, name="project"):
    """An empty project folder whose migrate_example.py is `text` (the cli fixture's CLI
    runs it)."""
    project = make_project(name, with_migrations=False)
    project.module.write_text(text)
    return project


def bare_db(project, *args):
    """A db command of the bare app: `python migrate_example.py db ...` (Flask-Migrate 2.7's
    MigrateCommand), or `flask db ...` (4.1)."""
    if MODERN:
        return project.run(sys.executable, "-m", "flask", "db", *args,
                           env={"FLASK_APP": "migrate_example.py"})
    return project.run(sys.executable, "migrate_example.py", "db", *args)


@pytest.fixture
def built_by_flask_migrate(make_project):
    """The tutorial's history and database made by bare Flask-Migrate (2.7, or 4.1 on the
    modern profile), with rows."""
    project = app_project(make_project, BARE)
    for step in (["init"], ["migrate", "-m", "tutorial"], ["upgrade"]):
        code, output = bare_db(project, *step)
        assert code == 0, output
    project.populate(rows=10)
    return project


# --- the naming convention ------------------------------------------------------------------


def test_init_refuses_models_without_names_and_the_edit_makes_unique_removable(make_project):
    project = app_project(make_project, HALF)

    code, output = project.db("init")

    assert (code, output) == (1, (f"Error: {NAMING_LINE}; then run `db init` again (nothing was "
                                 "written)\n"))
    assert not (project.path / "migrations").exists()
    project.module.write_text(WHOLE)  # the edit the line names
    for step in (["init"], ["migrate", "-m", "tutorial"], ["upgrade"]):
        code, output = project.db(*step)
        assert code == 0, output
    project.execute("INSERT INTO employee (id, name) VALUES (1, 'ann')")
    # What the half-followed path got wrong: taking unique=True away now migrates.
    project.edit_module("db.String, unique=True, nullable=False)\n    age",
                        "db.String, nullable=False)\n    age")
    assert project.db("check")[0] == 1
    code, output = project.db("migrate", "-m", "names repeat")
    assert code == 0 and "No changes" not in output, output
    assert project.db("upgrade")[0] == 0
    project.execute("INSERT INTO employee (id, name) VALUES (2, 'ann')")
    assert project.query("SELECT name FROM employee ORDER BY id") == [("ann",), ("ann",)]
    assert project.db("check") == (
        0, "The models, the migrations' head and the database agree.\n")


def test_check_does_not_say_agree_for_models_without_names(built_by_flask_migrate):
    project = built_by_flask_migrate
    project.module.write_text(HALF)
    assert project.db("env", "--force")[0] == 0

    code, output = project.db("check")
    assert (code, output) == (1, f"naming convention: {NAMING_LINE}\n")

    # The case: unique=True taken away, which Alembic cannot see without names.
    project.edit_module("db.String, unique=True, nullable=False)\n    age",
                        "db.String, nullable=False)\n    age")
    code, output = project.db("check")
    assert code == 1 and "agree" not in output, output
    assert output.startswith("naming convention: the models' MetaData names no constraints "), output

    project.module.write_text(WHOLE)
    assert project.db("check") == (
        0, "The models, the migrations' head and the database agree.\n")


UNIQUE_NAME = ("db.String, unique=True, nullable=False)\n    age",
               "db.String, nullable=False)\n    age")


def test_check_sees_an_unnamed_unique_the_models_dropped_and_the_way_out_works(
        built_by_flask_migrate):
    project = built_by_flask_migrate
    project.module.write_text(WHOLE)
    assert project.db("env", "--force")[0] == 0
    assert project.db("check")[0] == 0
    project.edit_module(*UNIQUE_NAME)

    code, output = project.db("check")  # SQLite's unique (name) has no name: Alembic is blind

    assert (code, output) == (1, (
        "unique (name) on employee: in the database, not in the models, and without a name, "
        "so `db migrate` cannot drop it: put it back in the models, name it with "
        "`db migrate -x names=convention` and `db upgrade`, then take it out\n"))
    project.edit_module(*reversed(UNIQUE_NAME))
    for step in (["migrate", "-m", "names", "-x", "names=convention"], ["upgrade"]):
        code, output = project.db(*step)
        assert code == 0, output
    project.edit_module(*UNIQUE_NAME)
    for step in (["migrate", "-m", "names repeat"], ["upgrade"]):
        code, output = project.db(*step)
        assert code == 0, output
    project.execute("INSERT INTO employee (id, name) VALUES (100, 'employee 1')")
    assert project.db("check") == (
        0, "The models, the migrations' head and the database agree.\n")


def test_naming_problem_names_what_is_missing():
    import sqlalchemy as sa

    from safe_migrate import metadata

    plain = sa.MetaData()
    sa.Table("t", plain, sa.Column("id", sa.Integer, primary_key=True),
             sa.Column("a", sa.Integer, sa.ForeignKey("t.id")), sa.Column("b", sa.Integer),
             sa.UniqueConstraint("b", name="uq_named"), sa.CheckConstraint("b > 0"))
    assert naming_problem(plain).startswith(
        "the models' MetaData names no constraints (its naming convention lacks uq, fk; "
        "unnamed: t check (b > 0), t foreign key (a))")
    named = metadata()
    sa.Table("t", named, sa.Column("id", sa.Integer, primary_key=True),
             sa.Column("a", sa.Integer, sa.ForeignKey("t.id"), unique=True, index=True),
             sa.CheckConstraint("a > 0", name="positive"))
    assert naming_problem(named) is None
    own = sa.MetaData(naming_convention={"uq": "uq_%(column_0_name)s",
                                         "fk": "fk_%(column_0_name)s"})
    sa.Table("t", own, sa.Column("id", sa.Integer, primary_key=True), sa.Index(None, "id"))
    assert naming_problem(own).startswith(
        "the models' MetaData names no constraints (unnamed: t index (id)), so ")


# --- db env ---------------------------------------------------------------------------------


def test_env_replaces_flask_migrates_env_py_only_when_asked(built_by_flask_migrate):
    project = built_by_flask_migrate
    project.module.write_text(WHOLE)
    env = project.path / "migrations" / "env.py"
    shown = "migrations/env.py"  # as the app's Migrate(directory="migrations") names it
    theirs = env.read_text()
    before = project.state()

    code, output = project.db("downgrade", "-x", "yes")
    assert code == 1 and output.splitlines()[-1] == (
        "Error: migrations/env.py does not run through safe_migrate, so nothing was applied: "
        "run `db env --force` to replace it with safe_migrate's (the old one is kept)"), output

    code, output = project.db("env")
    assert (code, output) == (1, (f"Error: {shown} differs from safe_migrate's env.py "
                                 "(Flask-Migrate's, or edited); nothing changed. To replace it, "
                                 "keeping it as env.py.bak, add --force\n"))
    assert env.read_text() == theirs

    code, output = project.db("env", "--force")
    assert (code, output) == (0, (f"Wrote {shown} from safe_migrate's template; the old one is "
                                 f"kept as {shown}.bak\n"))
    assert filecmp.cmp(env, TEMPLATE_ENV, shallow=False)
    assert env.with_name("env.py.bak").read_text() == theirs
    assert project.db("env") == (0, f"{shown} is already safe_migrate's env.py; nothing changed\n")
    code, output = project.db("upgrade")
    assert code == 0, output
    assert project.state() == before
    assert project.db("check")[0] == 0


def test_env_writes_a_missing_env_py_and_needs_a_migrations_folder(make_project):
    project = app_project(make_project, WHOLE)
    folder = project.path / "migrations"  # the app names it "migrations"

    code, output = project.db("env")
    assert (code, output) == (1, ("Error: no migrations folder at migrations (no alembic.ini): "
                                 "run `db init` to make one\n"))
    assert project.db("init")[0] == 0
    (folder / "env.py").unlink()
    assert project.db("env") == (0, "Wrote migrations/env.py from safe_migrate's template\n")
    assert filecmp.cmp(folder / "env.py", TEMPLATE_ENV, shallow=False)
    assert project.db("upgrade")[0] == 0


# --- the app's own hooks ----------------------------------------------------------------------


HOOKS = {
    "include_object": "lambda obj, name, type_, reflected, compare_to: name != 'audit_log'",
    "include_name": "lambda name, type_, parent_names: name != 'audit_log'",
}


@pytest.mark.parametrize("hook", HOOKS)
def test_the_apps_filter_is_obeyed_by_check_and_migrate(sqlite_project, hook):
    project = sqlite_project
    assert project.db("upgrade")[0] == 0
    project.execute("CREATE TABLE audit_log (id INTEGER PRIMARY KEY, line TEXT)")
    assert project.db("check") == (1, "table audit_log: in the database, not in the models\n")

    project.edit_module('directory=BASE_DIR / "migrations")',
                        f'directory=BASE_DIR / "migrations", {hook}={HOOKS[hook]})')

    assert project.db("check") == (
        0, "The models, the migrations' head and the database agree.\n")
    code, output = project.db("migrate", "-m", "nothing")
    assert code == 0 and "No changes in schema detected." in output, output
    assert len(project.revisions()) == 3


def test_the_apps_process_revision_directives_runs_with_ours(sqlite_project):
    project = sqlite_project
    assert project.db("upgrade")[0] == 0
    project.edit_module('directory=BASE_DIR / "migrations")',
                        'directory=BASE_DIR / "migrations", process_revision_directives=named)')
    project.edit_module("db = SQLAlchemy(app, metadata=metadata())\n",
                        "db = SQLAlchemy(app, metadata=metadata())\n\n\n"
                        "def named(context, revision, directives):\n"
                        "    directives[0].rev_id = 'ours00001'\n\n\n")
    project.edit_module("clocation = db.Column(db.String, unique=False, nullable=False)",
                        "clocation = db.Column(db.String, unique=False, nullable=False)\n"
                        "    phone = db.Column(db.String, nullable=True)")

    code, output = project.db("migrate", "-m", "phone")

    assert code == 0, output
    assert project.revisions()[-1] == "ours00001"
    assert project.db("upgrade")[0] == 0
    assert "phone" in project.columns("company")
    # Ours still runs after theirs: a model that matches writes no file.
    code, output = project.db("migrate", "-m", "nothing")
    assert code == 0 and "No changes in schema detected." in output, output


def test_env_has_its_help(sqlite_project):
    code, output = sqlite_project.db("env", "--help")
    assert code == 0, output
    assert "Write safe_migrate's migrations/env.py into an existing" in " ".join(output.split())
    assert "--force" in output, output
