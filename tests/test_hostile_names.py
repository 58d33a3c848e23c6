"""Names are data, never SQL: tables, columns, indexes and schemas named with quotes,
semicolons, `--`, keywords, spaces, mixed case and unicode go through every command
unharmed, and nothing else changes. The downgrade guards see every schema, and compare
rows, not statements.

The property test runs a few derandomized examples per backend (bounded for CI); to run
more locally: HOSTILE_EXAMPLES=50 pytest tests/test_hostile_names.py -k history
"""
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import CLIS, Project, copy_project
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

INJECTION = 'x" AS SELECT 1; COMMIT; DROP TABLE company; --'
KEYWORDS = ["", "", "select", "DROP", "Table", "order", "x\" AS SELECT 1; --", "';--", "a.b"]
ALPHABET = "aZq\"'; -%().\\é名ß"
EXAMPLES = int(os.environ.get("HOSTILE_EXAMPLES", "2"))
# Derandomized, a few examples, no shrinking (each example is a dozen CLI runs).
BOUNDED = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                   phases=[Phase.explicit, Phase.generate],
                   suppress_health_check=[HealthCheck.function_scoped_fixture,
                                          HealthCheck.too_slow])


def acceptable(name: str) -> bool:
    """A name both databases store as given: not reserved (sqlite_*, pg_*), not too long
    for PostgreSQL (63 bytes), no leading or trailing space."""
    folded = name.casefold()
    return (len(name.encode()) <= 60 and name == name.strip()
            and not folded.startswith(("sqlite_", "pg_")) and folded not in (
                "alembic_version", "migration_database", "migration_checksums", "company",
                "employee", "id"))


hostile_names = st.builds(lambda keyword, tail: keyword + tail, st.sampled_from(KEYWORDS),
                          st.text(ALPHABET, min_size=1, max_size=10)).filter(acceptable)
# Table, column, index and schema names: distinct even to SQLite, which folds case.
# Tables t1, t2, columns c1, c2, indexes i1, i2, schema s (see hostile_history).
FIXED_NAMES = [INJECTION, 'q"t', "Select", "it's; --", "ix é", "IX 名 2", "Audit Schema"]
# The last is the schema: no dot in it (Alembic reads `a.b` as database a, schema b).
name_sets = st.lists(hostile_names, min_size=7, max_size=7,
                     unique_by=lambda name: name.casefold()).filter(lambda n: "." not in n[6])


@pytest.fixture(params=CLIS)
def cli(request):
    """The fixed examples hold through both CLIs (the property test uses the Manager)."""
    return request.param


# --- what the database holds, in every schema --------------------------------------------


def is_system_schema(schema):
    return schema in ("pg_catalog", "information_schema") or schema.startswith(
        ("pg_toast", "pg_temp"))


def everything(url):
    """Every schema's tables (columns, indexes, rows) and alembic_version."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            schemas = ([None] if conn.dialect.name == "sqlite" else
                       [s for s in inspector.get_schema_names() if not is_system_schema(s)])
            found = {}
            for schema in schemas:
                for name in inspector.get_table_names(schema=schema):
                    columns = [c["name"] for c in inspector.get_columns(name, schema=schema)]
                    table = sa.table(name, *map(sa.column, columns), schema=schema)
                    rows = sorted(map(tuple, conn.execute(sa.select(table))), key=repr)
                    indexes = sorted((i["name"], tuple(i["column_names"]))
                                     for i in inspector.get_indexes(name, schema=schema))
                    found[(schema, name)] = (columns, indexes, rows)
            return {"schemas": schemas, "tables": found}
    finally:
        engine.dispose()


def insert(url, name, rows, schema=None):
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            columns = [c["name"] for c in sa.inspect(conn).get_columns(name, schema=schema)]
            conn.execute(sa.table(name, *map(sa.column, columns), schema=schema).insert(), rows)
    finally:
        engine.dispose()


def app_tables(state):
    """The tables of a state from everything(), our bookkeeping aside."""
    return {key: value for key, value in state["tables"].items()
            if key[1] not in ("alembic_version", "migration_checksums", "migration_database")}


def assert_no_traceback(output):
    assert "Traceback" not in output, output


# --- a revision history built from hostile names -----------------------------------------


def hostile_history(project, names, on_postgresql):
    """Two revisions on top of the tutorial's head. h1: table t1 (schema s on PostgreSQL)
    with column c1 and index i1, table t2 with c1; h2: column c2 on t1, index i2 on t2."""
    t1, t2, c1, c2, i1, i2, s = names
    s = s if on_postgresql else None
    create_schema = f"op.execute(sa.schema.CreateSchema({s!r}))" if s else "pass"
    drop_schema = f"op.execute(sa.schema.DropSchema({s!r}))" if s else "pass"
    project.add_revision("h1000001", f"""
        def upgrade():
            {create_schema}
            op.create_table({t1!r}, sa.Column("id", sa.Integer, primary_key=True),
                            sa.Column({c1!r}, sa.String(100)), schema={s!r})
            op.create_index({i1!r}, {t1!r}, [{c1!r}], schema={s!r})
            op.create_table({t2!r}, sa.Column("id", sa.Integer, primary_key=True),
                            sa.Column({c1!r}, sa.String(100)))


        def downgrade():
            op.drop_table({t2!r})
            op.drop_index({i1!r}, table_name={t1!r}, schema={s!r})
            op.drop_table({t1!r}, schema={s!r})
            {drop_schema}
    """)
    project.add_revision("h2000002", f"""
        def upgrade():
            op.add_column({t1!r}, sa.Column({c2!r}, sa.Integer), schema={s!r})
            op.create_index({i2!r}, {t2!r}, [{c1!r}])


        def downgrade():
            op.drop_index({i2!r}, table_name={t2!r})
            op.drop_column({t1!r}, {c2!r}, schema={s!r})
    """)
    default = "public" if on_postgresql else None
    return (s, t1), (default, t2), c1


def run_hostile_history(project, names, on_postgresql):
    url = project.database_url
    tutorial_head = project.revisions()[-1]
    assert project.db("upgrade")[0] == 0
    project.populate(10)
    first, second, c1 = hostile_history(project, names, on_postgresql)
    code, output = project.db("upgrade", "h1000001")
    assert code == 0, output
    insert(url, first[1], [{"id": i, c1: f"{names[0]} {i}"} for i in range(5)], first[0])
    insert(url, second[1], [{"id": i, c1: f"{names[1]} {i}"} for i in range(3)])
    at_h1 = everything(url)

    code, output = project.db("upgrade", "--rehearse")
    assert code == 0, output
    assert everything(url) == at_h1

    code, output = project.db("upgrade", "--round-trip")
    assert code == 0, output
    assert "every row is as the first upgrade left it" in output
    assert everything(url) == at_h1

    code, output = project.db("upgrade")
    assert code == 0, output
    at_h2 = everything(url)
    assert at_h2["tables"][first][2] == [(*row, None) for row in at_h1["tables"][first][2]]
    assert at_h2["tables"][second][2] == at_h1["tables"][second][2]
    assert project.version() == "h2000002"

    # check and migrate see the hostile tables as not in the models, and say so plainly.
    code, output = project.db("check")
    assert code == 1, output
    assert_no_traceback(output)
    versions = set((project.path / "migrations" / "versions").glob("*.py"))
    code, output = project.db("migrate", "-m", "hostile")
    assert_no_traceback(output)
    for made in set((project.path / "migrations" / "versions").glob("*.py")) - versions:
        compile(made.read_text(), str(made), "exec")
        made.unlink()
    assert everything(url) == at_h2

    if not on_postgresql:  # restore: the database's extra row is named before it is lost
        [snapshot] = (project.path / "backups").glob("data.db.h1000001-h2000002.*.db")
        insert(url, second[1], [{"id": 99, c1: "extra"}])
        with_extra = everything(url)
        code, output = project.db("restore", snapshot)
        assert code == 1, output
        assert f"{second[1]} (1 rows)" in output.splitlines()[-1], output
        assert everything(url) == with_extra
        code, output = project.db("restore", snapshot, "-x", "yes")
        assert code == 0, output
        assert everything(url) == at_h1
        assert project.db("upgrade")[0] == 0

    code, output = project.db("downgrade")  # h2 -> h1: a column goes, no row does
    assert code == 0, output
    assert everything(url)["tables"][first][2] == at_h1["tables"][first][2]
    before = everything(url)
    code, output = project.db("downgrade")  # h1 -> the tutorial: drops tables holding rows
    assert code == 1, output
    assert "this downgrade drops" in output.splitlines()[-1], output
    assert everything(url) == before
    code, output = project.db("downgrade", "-x", "yes")
    assert code == 0, output
    assert project.version() == tutorial_head
    after = everything(url)
    assert app_tables(after) == {
        key: value for key, value in app_tables(before).items() if key not in (first, second)}
    assert after["schemas"] == [schema for schema in before["schemas"] if schema != first[0]] \
        or not on_postgresql


def fresh_project(database_url=None):
    folder = Path(tempfile.mkdtemp(prefix="hostile-"))
    return Project(copy_project(folder / "project"), database_url), folder


@BOUNDED
@given(names=name_sets)
@example(names=FIXED_NAMES)
def test_a_history_of_hostile_names_on_sqlite(names):
    project, folder = fresh_project()
    try:
        run_hostile_history(project, names, on_postgresql=False)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.postgresql
@BOUNDED
@given(names=name_sets)
@example(names=FIXED_NAMES)
def test_a_history_of_hostile_names_on_postgresql(pg_server, names):
    database = "h_" + uuid.uuid4().hex[:12]
    pg_server.admin(f"CREATE DATABASE {database}")
    project, folder = fresh_project(pg_server.url(database))
    try:
        run_hostile_history(project, names, on_postgresql=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        pg_server.admin(f"DROP DATABASE {database} WITH (FORCE)")


# --- fixed examples -------------------------------------------------------------------


@pytest.mark.postgresql
def test_round_trip_with_an_injection_for_a_table_name_changes_nothing(make_project,
                                                                       new_pg_database):
    project = make_project(database_url=new_pg_database())
    assert project.db("upgrade")[0] == 0
    project.populate(10)
    project.add_revision("inj00001", f"""
        def upgrade():
            op.create_table({INJECTION!r}, sa.Column("id", sa.Integer, primary_key=True))
            op.execute(sa.table({INJECTION!r}, sa.column("id")).insert().values(id=1))


        def downgrade():
            op.drop_table({INJECTION!r})
    """)
    assert project.db("upgrade")[0] == 0
    project.add_revision("inj00002", """
        def upgrade():
            op.create_index("ix_employee_age", "employee", ["age"])


        def downgrade():
            op.drop_index("ix_employee_age", table_name="employee")
    """)
    before = everything(project.database_url)

    code, output = project.db("upgrade", "--round-trip")

    assert everything(project.database_url) == before, output  # company and alembic_version too
    assert project.version() == "inj00001"
    assert code == 0, output
    assert "every row is as the first upgrade left it" in output


def drop_and_create_note(project):
    """A revision whose downgrade empties `note` by a statement, then makes it again."""
    assert project.db("upgrade")[0] == 0
    project.add_revision("note0001", """
        def upgrade():
            note = op.create_table("note", sa.Column("id", sa.Integer, primary_key=True))
            op.bulk_insert(note, [{"id": 1}, {"id": 2}, {"id": 3}])


        def downgrade():
            op.execute("DROP TABLE note")
            op.create_table("note", sa.Column("id", sa.Integer, primary_key=True))
    """)
    assert project.db("upgrade")[0] == 0


def test_a_downgrade_that_drops_and_recreates_a_table_asks(project):
    drop_and_create_note(project)
    before = project.state()

    code, output = project.db("downgrade", "-x", "backup=off")

    assert code == 1, output
    assert output.splitlines()[-1] == (
        "Error: the downgrade of note0001 took rows from note (3 -> 0 rows); that revision "
        "was rolled back. To go ahead, add -x yes"), output
    assert project.state() == before
    assert project.query("SELECT count(*) FROM note") == [(3,)]
    assert project.version() == "note0001"
    code, output = project.db("downgrade", "-x", "backup=off", "-x", "yes")
    assert code == 0, output
    assert project.query("SELECT count(*) FROM note") == [(0,)]


@pytest.mark.postgresql
def test_a_downgrade_dropping_a_table_of_another_schema_asks(make_project, new_pg_database):
    project = make_project(database_url=new_pg_database())
    assert project.db("upgrade")[0] == 0
    project.add_revision("audit001", """
        def upgrade():
            op.execute("CREATE SCHEMA audit")
            op.create_table("log", sa.Column("id", sa.Integer, primary_key=True), schema="audit")
            op.execute("INSERT INTO audit.log SELECT generate_series(1, 500)")


        def downgrade():
            op.drop_table("log", schema="audit")
    """)
    assert project.db("upgrade")[0] == 0
    before = everything(project.database_url)

    code, output = project.db("downgrade")

    assert code == 1, output
    assert output.splitlines()[-1] == (
        "Error: this downgrade drops audit.log (500 rows); nothing changed. To go ahead, "
        "add -x yes"), output
    assert everything(project.database_url) == before
    assert project.query("SELECT count(*) FROM audit.log") == [(500,)]
    assert project.db("downgrade", "-x", "yes")[0] == 0
    assert ("audit", "log") not in everything(project.database_url)["tables"]


@pytest.mark.postgresql
def test_a_downgrade_that_drops_a_table_of_another_schema_by_a_statement_asks(
        make_project, new_pg_database):
    project = make_project(database_url=new_pg_database())
    assert project.db("upgrade")[0] == 0
    project.add_revision("audit002", """
        def upgrade():
            op.execute('CREATE SCHEMA "Audit"')
            op.execute('CREATE TABLE "Audit"."Log" AS SELECT generate_series(1, 50) AS id')


        def downgrade():
            op.execute('DROP TABLE "Audit"."Log"')
    """)
    assert project.db("upgrade")[0] == 0
    before = everything(project.database_url)

    code, output = project.db("downgrade")

    assert code == 1, output
    assert output.splitlines()[-1] == (
        "Error: the downgrade of audit002 dropped Audit.Log (50 rows); that revision was "
        "rolled back. To go ahead, add -x yes"), output
    assert everything(project.database_url) == before


@pytest.mark.postgresql
def test_rehearse_with_a_mixed_case_schema_in_search_path(make_project, new_pg_database,
                                                          pg_server):
    url = new_pg_database()
    database = url.rsplit("/", 1)[1]
    pg_server.admin(f'ALTER DATABASE {database} SET search_path TO "App"')
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text('CREATE SCHEMA "App"'))
    engine.dispose()
    project = make_project(database_url=url)
    assert project.db("upgrade", project.revisions()[0])[0] == 0
    project.populate(10)
    before = everything(url)
    assert ("App", "employee") in before["tables"]

    code, output = project.db("upgrade", "--rehearse")

    assert code == 0, output
    assert output.count("rows: company 10 -> 10, employee 10 -> 10") == 2, output
    assert "locks: employee AccessExclusiveLock" in output
    assert everything(url) == before


def test_a_downgrade_that_renames_a_table_back_loses_nothing(project):
    assert project.db("upgrade")[0] == 0
    project.populate(10)
    project.add_revision("firm0001", f"""
        def upgrade():
            op.rename_table("company", {INJECTION!r})


        def downgrade():
            op.rename_table({INJECTION!r}, "company")
    """)
    assert project.db("upgrade")[0] == 0

    code, output = project.db("downgrade", "-x", "backup=off")

    assert code == 0, output
    assert project.query("SELECT count(*) FROM company") == [(10,)]


# --- the guards' pure logic, in process ----------------------------------------------------


def test_rows_lost_compares_rows_per_table_in_every_schema():
    from safe_migrate.guards import rows_lost

    before = {("public", "note"): 3, ("audit", "log"): 500, ("public", "firm"): 10,
              ("public", "empty"): 0, ("public", "kept"): 7}
    now = {("public", "note"): 0, ("public", "company"): 10, ("public", "kept"): 8}
    assert rows_lost(before, now) == {("public", "note"): (3, 0), ("audit", "log"): (500, 0)}
    # firm is gone but its 10 rows turned up in the new company: renamed, not lost.


def test_system_schemas_are_not_the_apps():
    from safe_migrate.guards import is_system_schema

    assert all(map(is_system_schema, ["pg_catalog", "information_schema", "pg_toast",
                                      "pg_toast_temp_3", "pg_temp_3"]))
    assert not any(map(is_system_schema, ["public", "App", "audit", 'x"; --', "pgx"]))


@pytest.mark.postgresql
def test_rehearsal_reports_and_round_trip_compare_every_schema(make_project, new_pg_database):
    project = make_project(database_url=new_pg_database())
    assert project.db("upgrade")[0] == 0
    project.add_revision("audit003", """
        def upgrade():
            op.execute(sa.schema.CreateSchema("Audit"))
            op.execute('CREATE TABLE "Audit"."Log" AS SELECT generate_series(1, 50) AS id')


        def downgrade():
            op.execute(sa.schema.DropSchema("Audit", cascade=True))
    """)
    assert project.db("upgrade")[0] == 0
    project.add_revision("audit004", """
        def upgrade():
            op.add_column("Log", sa.Column("note", sa.String), schema="Audit")


        def downgrade():
            op.execute('DELETE FROM "Audit"."Log" WHERE id > 40')
            op.drop_column("Log", "note", schema="Audit")
    """)
    before = everything(project.database_url)

    code, output = project.db("upgrade", "--rehearse")
    assert code == 0, output
    assert "rows: Audit.Log 50 -> 50, company 0 -> 0, employee 0 -> 0" in output, output
    assert "locks: Audit.Log AccessExclusiveLock" in output, output

    code, output = project.db("upgrade", "--round-trip")
    assert code == 1, output
    assert output.splitlines()[-1] == "Error: the round trip lost rows: Audit.Log (10 rows)"
    assert everything(project.database_url) == before
