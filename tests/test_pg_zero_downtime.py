"""PostgreSQL: `db migrate` writes the zero-downtime pattern (concurrent indexes, NOT VALID
constraints validated after the transaction, SET NOT NULL through a CHECK, batched backfills,
renames and type changes flagged), `db upgrade` and `db upgrade --rehearse` run it; `--plain`
and SQLite write plain operations; `safe_migrate.backfill` goes in batches and resumes."""
import ast
import io
import tokenize
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import CLIS
from test_pg_autocommit import fingerprint

from safe_migrate import backfill

pytestmark = pytest.mark.postgresql

AGE = "    age = db.Column(db.Integer, unique=False, nullable=True)\n"
# index=True on age, and a foreign key to company in a new column.
INDEX_AND_FOREIGN_KEY = ("    age = db.Column(db.Integer, unique=False, nullable=True, index=True)\n"
                         "    company_id = db.Column(db.Integer, db.ForeignKey('company.cid'))\n")
AGE_NOT_NULL = "    age = db.Column(db.Integer, unique=False, nullable=False)\n"
TOKEN = (AGE + "    token = db.Column(db.String, nullable=False, "
         "server_default=db.text('md5(random()::text)'))\n")


@pytest.fixture
def backend():
    return "postgresql"


@pytest.fixture(params=CLIS)
def cli(request):
    """Both CLIs: the Manager and `flask db`."""
    return request.param


@pytest.fixture
def at_head(project):
    """The project at its head, with 100 rows in each table."""
    assert project.db("upgrade")[0] == 0
    project.populate(rows=100)
    return project


def migrate(project, *args):
    """`db migrate`; return (its output, the path of the revision it wrote)."""
    before = set((project.path / "migrations" / "versions").glob("*.py"))
    code, output = project.db("migrate", "-m", "change", *args)
    assert code == 0, output
    [path] = set((project.path / "migrations" / "versions").glob("*.py")) - before
    return output, path


def upgrade_calls(path: Path) -> list[tuple[str, str, list[str], dict[str, str]]]:
    """The calls of the revision's upgrade(), in order, read with Python's parser:
    (part, function, [argument], {keyword: value}) with arguments as Python source, and part
    "first" (the revision's transaction), "autocommit" (inside autocommit_block()), "after"
    (the transaction after that block)."""
    module = ast.parse(path.read_text())
    [upgrade] = [f for f in module.body if isinstance(f, ast.FunctionDef) and f.name == "upgrade"]
    calls, part = [], ["first"]

    def walk(statements):
        for statement in statements:
            if isinstance(statement, ast.With):
                block = ast.unparse(statement.items[0].context_expr)
                if block == "op.get_context().autocommit_block()":
                    part[0] = "autocommit"
                    walk(statement.body)
                    part[0] = "after"
                else:
                    walk(statement.body)
            elif isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call):
                call = statement.value
                calls.append((part[0], ast.unparse(call.func), [ast.unparse(a) for a in call.args],
                              {k.arg: ast.unparse(k.value) for k in call.keywords}))
    walk(upgrade.body)
    return calls


def comments(path: Path) -> list[str]:
    """The revision's comments, read with Python's tokenizer, one string per comment block
    (consecutive lines; Alembic's `# ### ... ###` lines each on their own)."""
    blocks, last_line = [], None
    for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if token.type == tokenize.COMMENT:
            text = token.string.lstrip("#").strip()
            if last_line == token.start[0] - 1:
                blocks[-1] += " " + text
            else:
                blocks.append(text)
            last_line = None if text.startswith("###") else token.start[0]
    return blocks


def index_valid(project, name):
    rows = project.query("SELECT i.indisvalid FROM pg_index i JOIN pg_class c "
                         "ON c.oid = i.indexrelid WHERE c.relname = :name", name=name)
    return rows[0][0] if rows else None


def constraints(project, table):
    """{name: (type, validated)} of the table's constraints, from pg_constraint."""
    return {name: (kind, valid) for name, kind, valid in project.query(
        "SELECT conname, contype, convalidated FROM pg_constraint "
        "WHERE conrelid = to_regclass(:table)", table=table)}


def not_null(project, table, column):
    return project.query("SELECT attnotnull FROM pg_attribute WHERE attrelid = "
                         "to_regclass(:table) AND attname = :column",
                         table=table, column=column) == [(True,)]


def test_indexes_are_concurrent_and_foreign_keys_validated_after_the_transaction(at_head):
    project = at_head
    project.edit_module(AGE, INDEX_AND_FOREIGN_KEY)

    output, path = migrate(project)

    fk = "fk_employee_company_id_company"
    assert [(part, function) for part, function, _, _ in upgrade_calls(path)] == [
        ("first", "batch_op.add_column"), ("first", "batch_op.create_foreign_key"),
        ("autocommit", "op.create_index"), ("autocommit", "op.execute")], path.read_text()
    _add, foreign_key, index, validate = upgrade_calls(path)
    assert foreign_key[2][0] == f"batch_op.f('{fk}')"
    assert foreign_key[3] == {"postgresql_not_valid": "True"}
    assert index[2] == ["op.f('ix_employee_age')", "'employee'", "['age']"]
    assert index[3] == {"unique": "False", "postgresql_concurrently": "True"}
    assert validate[2] == [f"ValidateConstraint('{fk}', 'employee')"]
    assert "lock hazard" not in output, output
    # db lint passes what db migrate wrote (issue 21: the generated safe revision exits 0).
    code, output = project.db("lint", path.name.split("_")[0])
    assert code == 0, output

    before = fingerprint(project)
    code, output = project.db("upgrade", "--rehearse")
    assert code == 0, output
    assert "its autocommit_block runs in the rehearsal's transaction" in output, output
    assert fingerprint(project) == before

    code, output = project.db("upgrade")
    assert code == 0, output
    assert index_valid(project, "ix_employee_age") is True
    assert constraints(project, "employee")[fk] == ("f", True)
    assert project.db("check")[0] == 0

    # And an index no longer wanted is dropped concurrently.
    project.edit_module("nullable=True, index=True)", "nullable=True)")
    _, path = migrate(project)
    [(part, function, args, keywords)] = upgrade_calls(path)
    assert (part, function, args[0]) == ("autocommit", "op.drop_index", "op.f('ix_employee_age')")
    assert keywords["postgresql_concurrently"] == "True"
    assert project.db("upgrade")[0] == 0
    assert index_valid(project, "ix_employee_age") is None


def test_plain_writes_plain_operations(at_head):
    project = at_head
    project.edit_module(AGE, INDEX_AND_FOREIGN_KEY)

    output, path = migrate(project, "--plain")

    calls = upgrade_calls(path)
    assert [(part, function) for part, function, _, _ in calls] == [
        ("first", "batch_op.add_column"), ("first", "batch_op.create_index"),
        ("first", "batch_op.create_foreign_key")], path.read_text()
    assert calls[1][3] == {"unique": "False"} and calls[2][3] == {}
    assert "WARNING: lock hazard: CREATE INDEX ix_employee_age blocks writes" in output, output
    code, output = project.db("lint", path.name.split("_")[0])
    assert code == 1, output
    assert "require-concurrent-index-creation" in output, output
    assert "constraint-missing-not-valid" in output, output
    assert project.db("upgrade")[0] == 0
    assert constraints(project, "employee")["fk_employee_company_id_company"] == ("f", True)


def test_set_not_null_goes_through_a_validated_check(at_head):
    project = at_head
    project.edit_module(AGE, AGE_NOT_NULL)

    output, path = migrate(project)

    check = "ck_employee_age_not_null"
    calls = upgrade_calls(path)
    assert [(part, function) for part, function, _, _ in calls] == [
        ("first", "op.create_check_constraint"), ("autocommit", "op.execute"),
        ("after", "op.alter_column"), ("after", "op.drop_constraint")], path.read_text()
    assert calls[0][2:] == ([f"op.f('{check}')", "'employee'", "sa.column('age').is_not(None)"],
                            {"postgresql_not_valid": "True"})
    assert calls[1][2] == [f"ValidateConstraint('{check}', 'employee')"]
    assert calls[2][2:] == (["'employee'", "'age'"],
                            {"existing_type": "sa.INTEGER()", "nullable": "False"})
    assert calls[3][2:] == ([f"op.f('{check}')", "'employee'"], {"type_": "'check'"})
    assert "SET NOT NULL" not in output, output  # no lock hazard left to name

    before = fingerprint(project)
    code, output = project.db("upgrade", "--rehearse")
    assert code == 0, output
    assert fingerprint(project) == before

    code, output = project.db("upgrade")
    assert code == 0, output
    assert not_null(project, "employee", "age")
    assert check not in constraints(project, "employee")
    assert project.db("check")[0] == 0


def test_a_volatile_default_is_added_empty_and_backfilled(at_head):
    project = at_head
    project.edit_module(AGE, TOKEN)

    output, path = migrate(project)

    check = "ck_employee_token_not_null"
    calls = upgrade_calls(path)
    assert [(part, function) for part, function, _, _ in calls] == [
        ("first", "batch_op.add_column"), ("first", "batch_op.alter_column"),
        ("autocommit", "backfill"), ("autocommit", "op.create_check_constraint"),
        ("autocommit", "op.execute"), ("after", "op.alter_column"),
        ("after", "op.drop_constraint")], path.read_text()
    assert calls[0][2] == ["sa.Column('token', sa.String(), nullable=True)"]
    assert calls[1][3]["server_default"] == "sa.text('md5(random()::text)')"
    assert calls[2][2:] == (["'employee'"], {"set": "{'token': sa.text('md5(random()::text)')}",
                                             "batch": "10000"})
    assert "volatile default" not in output, output

    before = fingerprint(project)
    code, output = project.db("upgrade", "--rehearse")
    assert code == 0, output
    assert "backfill of employee: 100 rows in 1 batches" in output, output
    assert fingerprint(project) == before

    code, output = project.db("upgrade")
    assert code == 0, output
    assert project.query("SELECT count(DISTINCT token) FROM employee") == [(100,)]
    assert not_null(project, "employee", "token")
    assert check not in constraints(project, "employee")
    project.execute("INSERT INTO employee (id, name) VALUES (1000, 'new')")  # the default
    assert project.query("SELECT count(*) FROM employee WHERE token IS NULL") == [(0,)]


def test_renames_and_type_changes_are_flagged(at_head):
    project = at_head
    project.edit_module(AGE, "    years = db.Column(db.Integer, unique=False, nullable=True)\n")
    project.edit_module("name = db.Column(db.String,", "name = db.Column(db.Text,")

    output, path = migrate(project, "-x", "rename=employee.age:years")

    recipe = ("breaks the app instances still running the old code; expand/contract instead: "
              "add the new column, have the app write both, fill it with safe_migrate.backfill, "
              "switch reads to it, and drop the old one in a later revision")
    flagged = [f"rolling deploy: renaming column employee.age to years {recipe}",
               ("rolling deploy: changing the type of employee.name from VARCHAR to TEXT "
               f"{recipe}")]
    warnings = [line for line in output.splitlines() if line.startswith("WARNING: rolling")]
    assert warnings == [f"WARNING: {line}" for line in flagged], output
    assert [c for c in comments(path) if c.startswith("rolling")] == flagged, path.read_text()
    assert project.db("upgrade")[0] == 0
    assert "years" in project.columns("employee")


def test_sqlite_gets_plain_operations(make_project):
    project = make_project()  # its default SQLite file
    assert project.db("upgrade")[0] == 0
    project.edit_module(AGE, INDEX_AND_FOREIGN_KEY)

    _, path = migrate(project)

    assert [(part, function) for part, function, _, _ in upgrade_calls(path)] == [
        ("first", "batch_op.add_column"), ("first", "batch_op.create_index"),
        ("first", "batch_op.create_foreign_key")], path.read_text()


# --- safe_migrate.backfill, in-process on a real server ------------------------------------


@pytest.fixture
def pg_engine(new_pg_database):
    engine = sa.create_engine(new_pg_database())
    yield engine
    engine.dispose()


def test_backfill_goes_in_batches_and_resumes_where_it_stopped(pg_engine):
    with pg_engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE item (id int PRIMARY KEY, n int NOT NULL, "
                             "half int)"))
        conn.execute(sa.text("INSERT INTO item (id, n) SELECT i, i FROM generate_series(1, 95) i"))
        conn.execute(sa.text("UPDATE item SET n = 0 WHERE id = 57"))  # 1 / 0 stops the backfill
    updates = []
    # PostgreSQL's integer division (SQLAlchemy 2 renders `/` as true division).
    value = sa.func.div(100, sa.column("n"))
    with pg_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        sa.event.listen(conn, "before_cursor_execute",
                        lambda *args: updates.append(args[2].startswith("UPDATE")))
        with pytest.raises(sa.exc.DataError, match="division by zero"):
            backfill("item", set={"half": value}, batch=10, connection=conn)
        # Each batch committed on its own: the five before the one with id 57 stay.
        assert conn.execute(sa.text("SELECT min(id), max(id), count(*) FROM item "
                                    "WHERE half IS NOT NULL")).one() == (1, 50, 50)
        conn.execute(sa.text("UPDATE item SET n = 1 WHERE id = 57"))
        updates.clear()

        assert backfill("item", set={"half": value}, batch=10, connection=conn) == 45

        assert sum(updates) == 6  # five batches of 10 or fewer, and the empty one at the end
        assert conn.execute(sa.text("SELECT count(*) FROM item WHERE half = 100 / n")).scalar() \
            == 95
