"""Adopting a project that predates the package: a database and history made by bare
Flask-Migrate (2.7 on the legacy profile, 4.1's `flask db` on the modern one) come under the
tool with no spurious revision, and its old revisions run with the names they were written
for."""
import shutil
import sys

import pytest
from conftest import MODERN, ROOT


def bare_app():
    """The tutorial's module as published (bench/tutorial_app.py: bare Flask-Migrate 2.7, no
    safe_migrate), reading DATABASE_URL as ours does; on the modern profile the same app on
    Flask-Migrate 4.1, whose `db` commands are `flask db` only (it has no MigrateCommand)."""
    text = (ROOT / "bench" / "tutorial_app.py").read_text()
    if MODERN:
        text = text.replace("import Migrate, MigrateCommand", "import Migrate").replace(
            "from flask_script import", "from flask_script_ng import").replace(
            'manager.add_command("db", MigrateCommand)\n', "")
    return "import os\n" + text.replace(
        '"sqlite:///data.db"', 'os.environ.get("DATABASE_URL", "sqlite:///data.db")')


def bare_db(project, *args):
    """A db command of the bare app: `python bare_app.py db ...`, or `flask db ...` (4.1), on
    the project's database by its absolute URL (Flask-SQLAlchemy 3 would put a relative SQLite
    path under instance/)."""
    env = {"DATABASE_URL": project.database_url}
    if MODERN:
        return project.run(sys.executable, "-m", "flask", "db", *args,
                           env={**env, "FLASK_APP": "bare_app.py"})
    return project.run(sys.executable, "bare_app.py", "db", *args, env=env)


@pytest.fixture
def built_by_flask_migrate(make_project, database_url):
    """A project whose history and database bare Flask-Migrate made, with rows, then handed
    to the tool as the README says: its env.py replaced by the package's."""
    project = make_project(database_url=database_url, with_migrations=False)
    (project.path / "bare_app.py").write_text(bare_app())
    for step in (["init"], ["migrate", "-m", "tutorial"], ["upgrade"]):
        code, output = bare_db(project, *step)
        assert code == 0, output
    project.populate(rows=100)
    shutil.copy(ROOT / "safe_migrate" / "templates" / "flask" / "env.py",
                project.path / "migrations" / "env.py")
    return project


def versions(project):
    return sorted(p.name for p in (project.path / "migrations" / "versions").glob("*.py"))


def test_a_database_built_by_flask_migrate_is_adopted_without_a_revision(built_by_flask_migrate):
    project = built_by_flask_migrate
    before, files = project.state(), versions(project)

    assert project.db("check") == (0, "The models, the migrations' head and the database agree.\n")
    code, output = project.db("migrate")
    assert code == 0 and "No changes in schema detected." in output, output
    assert "setting up autogenerate plugin" not in output, output
    assert versions(project) == files
    assert project.db("upgrade")[0] == 0
    assert project.state() == before


def test_names_can_be_adopted_on_request(built_by_flask_migrate):
    project = built_by_flask_migrate

    code, output = project.db("migrate", "-m", "adopt names", "-x", "names=convention")

    assert code == 0, output
    assert project.db("upgrade")[0] == 0, output
    unique = {u["name"] for u in project.inspector().get_unique_constraints("employee")}
    assert "uq_employee_name" in unique
    assert project.db("check")[0] == 0
    assert project.db("downgrade", "-x", "backup=off")[0] == 0
    unique = {u["name"] for u in project.inspector().get_unique_constraints("employee")}
    assert "uq_employee_name" not in unique


DEPARTMENT = """
    def upgrade():
        op.create_table(
            "department",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("company_cid", sa.Integer, sa.ForeignKey("company.cid")),
            sa.Column("name", sa.String),
            sa.Column("floor", sa.Integer),
            sa.UniqueConstraint("company_cid", "name"),
            sa.UniqueConstraint("company_cid", "floor"),
        )


    def downgrade():
        op.drop_table("department")
"""

DROP_DEFAULT_NAMED_FK = """
    def upgrade():
        op.drop_constraint("department_company_cid_fkey", "department", type_="foreignkey")


    def downgrade():
        op.create_foreign_key("department_company_cid_fkey", "department", "company",
                              ["company_cid"], ["cid"])
"""


@pytest.mark.postgresql
@pytest.mark.parametrize("backend", ["postgresql"])
def test_old_revisions_keep_postgresqls_default_names(built_by_flask_migrate):
    project = built_by_flask_migrate
    revisions = [p.split("_")[0] for p in versions(project)]
    project.add_revision("dept0001", DEPARTMENT, down_revision=revisions[-1])
    project.add_revision("dept0002", DROP_DEFAULT_NAMED_FK, down_revision="dept0001")

    code, output = project.db("upgrade")

    assert code == 0, output
    inspector = project.inspector()
    assert inspector.get_foreign_keys("department") == []
    assert sorted(u["column_names"] for u in inspector.get_unique_constraints("department")) == [
        ["company_cid", "floor"], ["company_cid", "name"]]
    assert project.db("downgrade", "-x", "backup=off")[0] == 0
    assert [f["name"] for f in project.inspector().get_foreign_keys("department")] == [
        "department_company_cid_fkey"]
