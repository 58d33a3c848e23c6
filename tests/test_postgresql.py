"""PostgreSQL only: the offline (--sql) scripts a DBA reviews give what the online run gives."""
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.postgresql


@pytest.fixture
def backend():
    return "postgresql"


@pytest.fixture
def offline_project(make_project, new_pg_database):
    """A second copy of the project whose database only ever sees psql, never Alembic."""
    return make_project("offline", new_pg_database())


def apply_with_psql(project, sql):
    psql = shutil.which("psql")
    assert psql, "psql not found (apt-get install -y postgresql)"
    result = subprocess.run(
        [psql, project.database_url, "-v", "ON_ERROR_STOP=1", "-q"],
        input=sql, text=True, capture_output=True, check=False,
    )
    assert result.returncode == 0, result.stderr


def app_schema(project):
    """The schema without migration_checksums: offline SQL applies nothing itself, so it
    records no checksums (`db repair` records them after a DBA has run the script)."""
    return {t: v for t, v in project.schema().items() if t != "migration_checksums"}


def offline_sql(project, *args):
    code, sql = project.db(*args, "--sql", stderr=subprocess.DEVNULL)
    assert code == 0, sql
    return sql


def test_offline_upgrade_sql_gives_the_online_schema(project, offline_project):
    assert project.db("upgrade")[0] == 0

    sql = offline_sql(offline_project, "upgrade")
    assert "CREATE TABLE employee" in sql and "ALTER TABLE employee DROP COLUMN email" in sql
    apply_with_psql(offline_project, sql)

    assert app_schema(offline_project) == app_schema(project)
    assert offline_project.version() == project.version() == project.revisions()[-1]


def test_offline_downgrade_sql_gives_the_online_schema(project, offline_project):
    first = project.revisions()[0]
    assert project.db("upgrade")[0] == 0
    assert project.db("downgrade", first)[0] == 0
    apply_with_psql(offline_project, offline_sql(offline_project, "upgrade"))

    apply_with_psql(offline_project, offline_sql(offline_project, "downgrade", f"head:{first}"))

    assert app_schema(offline_project) == app_schema(project)
    assert offline_project.version() == project.version() == first
