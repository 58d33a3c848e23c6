"""SQLite table changes that cannot lose what they do not understand (sqlite_copies): native
ALTER TABLE where SQLite can, and every copy judged by SQLite's own introspection.

Each test writes the tables a real app had (by SQL, as SQLite keeps them) in one revision and
changes them in the next, then checks the schema by SQLite's PRAGMAs and the behaviour: an
insert that failed before must still fail."""
import sqlite3
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations
from conftest import CLIS, file_hash

from safe_migrate import sqlite_copies
from safe_migrate.connections import migration_engine
from safe_migrate.locks import WaitBudget
from safe_migrate.settings import Settings


@pytest.fixture(params=CLIS)
def cli(request):
    return request.param


# Tables of the measured losses: each has a column `legacy` that the next revision drops.
TABLES = {
    "member": "CREATE TABLE member (id INTEGER PRIMARY KEY, org TEXT, email TEXT, legacy TEXT,"
              " UNIQUE (\n org,\n email\n))",
    "ranked": "CREATE TABLE ranked (id INTEGER PRIMARY KEY, rank INTEGER, legacy TEXT, "
              "UNIQUE (rank DESC))",
    "naive": "CREATE TABLE naive (id INTEGER PRIMARY KEY, naïve TEXT, legacy TEXT, "
             "UNIQUE (naïve))",
    "tagged": "CREATE TABLE tagged (id INTEGER PRIMARY KEY, tag TEXT, legacy TEXT, "
              "UNIQUE (tag COLLATE NOCASE))",
    "account": "CREATE TABLE account (id INTEGER PRIMARY KEY, email TEXT, legacy TEXT, "
               "created TEXT DEFAULT CURRENT_TIMESTAMP, score REAL DEFAULT -1.5)",
    "kv": "CREATE TABLE kv (k TEXT PRIMARY KEY, v ANY, legacy TEXT) STRICT",
    "coded": "CREATE TABLE coded (id INTEGER PRIMARY KEY, "
             "code TEXT UNIQUE ON CONFLICT REPLACE, "
             "note TEXT NOT NULL ON CONFLICT IGNORE, "
             'label TEXT COLLATE "NOCASE" UNIQUE, legacy TEXT)',
}
EXTRA = [
    "CREATE UNIQUE INDEX uq_member_email ON account (email COLLATE NOCASE)",
    "INSERT INTO member (org, email) VALUES ('o', 'a@x')",
    "INSERT INTO ranked (rank) VALUES (1)",
    "INSERT INTO naive (naïve) VALUES ('é')",
    "INSERT INTO tagged (tag) VALUES ('Red')",
    "INSERT INTO account (email) VALUES ('A@x')",
    "INSERT INTO kv (k, v) VALUES ('a', '007'), ('b', '1.10'), ('c', '12345678901234567890')",
    "INSERT INTO coded (code, note, label) VALUES ('c1', 'first', 'L')",
]


def create_revision(statements, downgrade_tables):
    body = "\n".join(f"    op.execute({s!r})" for s in statements)
    drops = "\n".join(f"    op.execute('DROP TABLE {t}')" for t in downgrade_tables)
    return f"\n\ndef upgrade():\n{body}\n\n\ndef downgrade():\n{drops}\n"


def drop_legacy_revision(tables, comment=""):
    blocks = "\n".join(
        f"    with op.batch_alter_table({t!r}) as batch_op:  {comment}\n"
        f"        batch_op.drop_column('legacy')" for t in tables)
    adds = "\n".join(
        f"    with op.batch_alter_table({t!r}) as batch_op:\n"
        f"        batch_op.add_column(sa.Column('legacy', sa.Text))" for t in tables)
    return f"\n\ndef upgrade():\n{blocks}\n\n\ndef downgrade():\n{adds}\n"


def fails(database, sql, params=()):
    """Whether this statement fails with an IntegrityError (rolled back either way)."""
    with sqlite3.connect(database) as conn:
        try:
            conn.execute(sql, params)
        except sqlite3.IntegrityError:
            return True
        finally:
            conn.rollback()
    return False


def rows(database, sql, params=()):
    with sqlite3.connect(database) as conn:
        return conn.execute(sql, params).fetchall()


@pytest.fixture
def legacy_tables(sqlite_project):
    project = sqlite_project
    assert project.db("upgrade")[0] == 0
    project.add_revision("tables01", create_revision([*TABLES.values(), *EXTRA], TABLES))
    assert project.db("upgrade", "-x", "backup=off")[0] == 0
    return project


def test_dropping_a_column_keeps_every_constraint_the_table_had(legacy_tables):
    project = legacy_tables
    database = project.path / "data.db"
    project.add_revision("drop0001", drop_legacy_revision(TABLES))
    roots = rows(database, "SELECT name, rootpage FROM sqlite_schema WHERE type = 'table'")

    code, output = project.db("upgrade", "-x", "backup=off")

    assert code == 0, output
    # No copy: SQLite's ALTER TABLE changed each table in place (a copy has a new root page).
    assert rows(database, "SELECT name, rootpage FROM sqlite_schema WHERE type = 'table'") \
        == roots
    for table in TABLES:
        assert "legacy" not in [r[1] for r in rows(database, "SELECT * FROM pragma_table_xinfo(?)",
                                                  (table,))]
    assert fails(database, "INSERT INTO member (org, email) VALUES ('o', 'a@x')")
    assert fails(database, "INSERT INTO ranked (rank) VALUES (1)")
    assert fails(database, "INSERT INTO naive (naïve) VALUES ('é')")
    assert fails(database, "INSERT INTO tagged (tag) VALUES ('RED')")
    assert fails(database, "INSERT INTO account (email) VALUES ('a@X')")
    assert rows(database, "SELECT coll FROM pragma_index_xinfo('uq_member_email') WHERE key") \
        == [("NOCASE",)]
    assert rows(database, "SELECT strict FROM pragma_table_list('kv')") == [(1,)]
    assert rows(database, "SELECT v, typeof(v) FROM kv ORDER BY k") == [
        ("007", "text"), ("1.10", "text"), ("12345678901234567890", "text")]
    # ON CONFLICT REPLACE replaces, ON CONFLICT IGNORE ignores, COLLATE "NOCASE" still holds.
    assert not fails(database, "INSERT INTO coded (code, note, label) VALUES ('c1', 'x', 'M')")
    with sqlite3.connect(database) as conn:
        conn.execute("INSERT INTO coded (code, note, label) VALUES ('c1', 'again', 'M')")
        conn.execute("INSERT INTO coded (code, note, label) VALUES ('c2', NULL, 'N')")
        assert conn.execute("SELECT code, note FROM coded").fetchall() == [("c1", "again")]
    assert fails(database, "INSERT INTO coded (code, note, label) VALUES ('c9', 'x', 'm')")


EMPLOYEE = [
    "CREATE TABLE staff (id INTEGER PRIMARY KEY, name TEXT, legacy TEXT)",
    "CREATE INDEX ix_employee_name ON staff (lower(name))",
    "CREATE TABLE staff_log (staff_id INTEGER)",
    "CREATE TRIGGER audit AFTER INSERT ON staff BEGIN INSERT INTO staff_log VALUES (NEW.id); END",
    "CREATE VIEW v_emp AS SELECT id, name FROM staff",
    "CREATE TABLE office (id INTEGER PRIMARY KEY)",
    ("CREATE TRIGGER office_staff AFTER INSERT ON office "
     "BEGIN INSERT INTO staff (name) VALUES ('new hire'); END"),
    "INSERT INTO staff (name) VALUES ('ann')",
]


def staff_objects(database):
    return sorted(rows(database, "SELECT type, name, sql FROM sqlite_schema "
                                 "WHERE type IN ('index', 'trigger', 'view')"))


@pytest.mark.parametrize("recreate", ["auto", "always"])
def test_indexes_triggers_and_views_survive_whatever_the_revision_says(sqlite_project, recreate):
    """The revision's text names the index and the trigger (it once made them dropped); a
    view and another table's trigger name the table (they once made the copy fail)."""
    project = sqlite_project
    assert project.db("upgrade")[0] == 0
    project.add_revision("staff001", create_revision(
        EMPLOYEE, ["office", "staff_log", "staff"]).replace(
            "DROP TABLE office')", "DROP TABLE office')\n    op.execute('DROP VIEW v_emp')"))
    project.add_revision("drop0001", textwrap.dedent(f"""
        def upgrade():
            # ix_employee_name and audit stay as they are
            with op.batch_alter_table("staff", recreate={recreate!r}) as batch_op:
                batch_op.drop_column("legacy")


        def downgrade():
            pass
    """))
    assert project.db("upgrade", "staff001", "-x", "backup=off")[0] == 0
    database = project.path / "data.db"
    before = staff_objects(database)

    code, output = project.db("upgrade", "-x", "backup=off")

    assert code == 0, output
    assert "Warning" not in output, output  # SQLAlchemy's, on the expression index it skips
    assert staff_objects(database) == before
    with sqlite3.connect(database) as conn:
        conn.execute("INSERT INTO office DEFAULT VALUES")  # the trigger on office still fires
        assert conn.execute("SELECT name FROM v_emp ORDER BY id").fetchall() == [
            ("ann",), ("new hire",)]
        assert conn.execute("SELECT count(*) FROM staff_log").fetchone() == (2,)


def reflects_strict(database) -> bool:
    """Whether this SQLAlchemy reflects STRICT (2.0 does, as sqlite_strict; 1.4 does not)."""
    engine = sa.create_engine(f"sqlite:///{database}")
    try:
        return bool(sa.inspect(engine).get_table_options("kv").get("sqlite_strict"))
    finally:
        engine.dispose()


def test_a_copy_keeps_strict_and_any_or_is_refused_byte_identical(legacy_tables):
    """Where SQLAlchemy reflects STRICT the copy keeps it, and the ANY column SQLAlchemy
    reflects as NUMERIC keeps its declared type (sqlite_copies.keep_declared_types). Where it
    does not, the copy would lose STRICT, and with it what ANY keeps: refused."""
    project = legacy_tables
    database = project.path / "data.db"
    revision = project.add_revision("copy0001", textwrap.dedent("""
        def upgrade():
            with op.batch_alter_table("kv", recreate="always") as batch_op:
                batch_op.drop_column("legacy")


        def downgrade():
            pass
    """))
    before = file_hash(database)

    code, output = project.db("upgrade", "-x", "backup=off")

    if reflects_strict(database):
        assert code == 0, output
        assert rows(database, "SELECT strict FROM pragma_table_list('kv')") == [(1,)]
        assert rows(database, "SELECT name, type FROM pragma_table_xinfo('kv')") == [
            ("k", "TEXT"), ("v", "ANY")]
        assert rows(database, "SELECT k, v, typeof(v) FROM kv ORDER BY k") == [
            ("a", "007", "text"), ("b", "1.10", "text"), ("c", "12345678901234567890", "text")]
        return
    assert code == 1
    line = output.splitlines()[-1]
    assert line.startswith(f"Error: {revision}: its table copies would lose STRICT of kv, type ANY of kv.v;"), line
    assert line.endswith("; revision rolled back. To lose them, add -x lose=kv"), line
    assert file_hash(database) == before

    code, output = project.db("upgrade", "-x", "backup=off", "-x", "lose=kv")
    assert code == 0, output
    assert rows(database, "SELECT strict FROM pragma_table_list('kv')") == [(0,)]


def test_a_copy_keeps_each_declared_type_it_does_not_change(sqlite_project):
    """INT PRIMARY KEY is not a rowid alias and holds any value; SQLAlchemy reflects INT as
    INTEGER, and INTEGER PRIMARY KEY would be one, refusing a text key the table holds."""
    project = sqlite_project
    database = project.path / "data.db"
    assert project.db("upgrade")[0] == 0
    project.add_revision("keys0001", textwrap.dedent("""
        def upgrade():
            op.execute("CREATE TABLE legacy_code (code INT PRIMARY KEY, label varchar(20), note)")
            op.execute("INSERT INTO legacy_code VALUES ('A-1', 'first', 'x')")


        def downgrade():
            op.execute("DROP TABLE legacy_code")
    """))
    project.add_revision("keys0002", textwrap.dedent("""
        def upgrade():
            with op.batch_alter_table("legacy_code", recreate="always") as batch_op:
                batch_op.drop_column("note")


        def downgrade():
            pass
    """))

    code, output = project.db("upgrade", "-x", "backup=off")

    assert code == 0, output
    assert rows(database, "SELECT name, type, pk FROM pragma_table_xinfo('legacy_code')") == [
        ("code", "INT", 1), ("label", "varchar(20)", 0)]
    assert rows(database, "SELECT code, label FROM legacy_code") == [("A-1", "first")]


def test_a_declared_type_is_kept_only_where_sqlite_reads_it_back_the_same():
    assert sqlite_copies.declares_itself("INT")
    assert sqlite_copies.declares_itself("varchar(20)")
    assert sqlite_copies.declares_itself("")
    assert not sqlite_copies.declares_itself("odd] (10")  # PRAGMA's view of [odd] (10)
    assert not sqlite_copies.declares_itself("INT, x TEXT")
    assert not sqlite_copies.declares_itself("INT); DROP TABLE t; --")


def test_a_copy_keeps_what_alembic_leaves_out_of_an_index(legacy_tables):
    """A copy forced by an operation SQLite cannot do in place (a type change) recreates the
    index with its COLLATE, which Alembic's reflection leaves out; the defaults Alembic writes
    back as `(CURRENT_TIMESTAMP)` and `(-1.5)` are the same defaults (SQLite's PRAGMA shows
    them without the parentheses), not a loss."""
    project = legacy_tables
    database = project.path / "data.db"
    project.add_revision("copy0001", textwrap.dedent("""
        def upgrade():
            with op.batch_alter_table("account") as batch_op:
                batch_op.alter_column("legacy", type_=sa.Integer)


        def downgrade():
            pass
    """))

    code, output = project.db("upgrade", "-x", "backup=off")

    assert code == 0, output
    assert rows(database, "SELECT type FROM pragma_table_xinfo('account') WHERE name = 'legacy'") \
        == [("INTEGER",)]
    assert fails(database, "INSERT INTO account (email) VALUES ('a@X')")


def test_removing_autoincrement_on_purpose_runs(sqlite_project):
    """ihatemoney's revision cb038f79982e: its downgrade recreates the tables with
    table_kwargs={"sqlite_autoincrement": False}, which Flask-Migrate runs."""
    project = sqlite_project
    assert project.db("upgrade")[0] == 0
    project.add_revision("person01", textwrap.dedent("""
        def upgrade():
            op.create_table("person", sa.Column("id", sa.Integer, primary_key=True),
                            sa.Column("name", sa.String), sqlite_autoincrement=True)
            op.execute("INSERT INTO person (name) VALUES ('a'), ('b')")


        def downgrade():
            op.drop_table("person")
    """))
    project.add_revision("cb038f79", textwrap.dedent("""
        def upgrade():
            with op.batch_alter_table("person", recreate="always",
                                      table_kwargs={"sqlite_autoincrement": True}):
                pass


        def downgrade():
            with op.batch_alter_table("person", recreate="always",
                                      table_kwargs={"sqlite_autoincrement": False}):
                pass
    """))
    database = project.path / "data.db"
    assert project.db("upgrade", "-x", "backup=off")[0] == 0

    code, output = project.db("downgrade", "person01", "-x", "backup=off")

    assert code == 0, output
    assert rows(database, "SELECT name FROM person ORDER BY id") == [("a",), ("b",)]
    with sqlite3.connect(database) as conn:  # no AUTOINCREMENT: a deleted id is used again
        conn.execute("DELETE FROM person WHERE id = 2")
        assert conn.execute("INSERT INTO person (name) VALUES ('c')").lastrowid == 2


def in_process(path, body, recreate="auto"):
    """Run one batch block on a SQLite file as the runner does; return the copy losses."""
    engine = migration_engine(sa.engine.make_url(f"sqlite:///{path}"), Path(path), Settings(),
                              {}, budget=WaitBudget(60))  # a migration run's, as the runner's
    try:
        with engine.connect() as connection:
            transaction = connection.begin()
            context = MigrationContext.configure(connection)
            sqlite_copies.install(context)
            with Operations(context).batch_alter_table("t", recreate=recreate) as batch_op:
                body(batch_op)
            losses = sqlite_copies.losses(context)
            (transaction.rollback if losses else transaction.commit)()  # the runner's rule
            return losses
    finally:
        engine.dispose()


def test_a_positioned_add_column_still_copies(tmp_path):
    """Alembic asks the impl while add_column(insert_before=...) is queued; the drop before it
    must not run natively then, and the whole block is one copy with the column in place."""
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, legacy TEXT)")

    def body(batch_op):
        batch_op.drop_column("legacy")
        batch_op.add_column(sa.Column("b", sa.Text), insert_before="a")

    assert in_process(path, body) == []
    assert [r[1] for r in rows(path, "SELECT * FROM pragma_table_info('t')")] == ["id", "b", "a"]


def test_sqlite_refusing_the_native_drop_falls_back_to_the_copy(tmp_path):
    """A column in a UNIQUE constraint cannot be dropped in place (SQLite says so): the block
    copies instead, and the copy drops the constraint with its column, as asked."""
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT COLLATE NOCASE, "
                     "legacy TEXT UNIQUE)")
        conn.execute("INSERT INTO t (a, legacy) VALUES ('x', 'y')")
    [(root,)] = rows(path, "SELECT rootpage FROM sqlite_schema WHERE name = 't'")

    losses = in_process(path, lambda batch_op: batch_op.drop_column("legacy"))

    # Alembic's copy loses a's COLLATE NOCASE: refused (rolled back), nothing changed.
    assert losses == [("t", "COLLATE NOCASE of t.a")]
    assert rows(path, "SELECT rootpage FROM sqlite_schema WHERE name = 't'") == [(root,)]
    assert [r[1] for r in rows(path, "SELECT * FROM pragma_table_info('t')")] == [
        "id", "a", "legacy"]


def test_a_view_of_the_dropped_column_is_named_in_the_refusal(tmp_path):
    """SQLite refuses to drop a column a view uses; Alembic's copy would drop the view with
    it: refused, naming the view and what to do."""
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, legacy TEXT)")
        conn.execute("CREATE VIEW v_legacy AS SELECT id, legacy FROM t")
    before = file_hash(path)

    losses = in_process(path, lambda batch_op: batch_op.drop_column("legacy"))

    view = "view v_legacy (it refers to what the copy removed; drop or change it in the revision first)"
    assert losses == [("t", view)]
    assert file_hash(path) == before


def test_a_type_change_keeps_the_columns_collation_and_its_unique(tmp_path):
    """A new type without a collation does not ask for the old one to go: the copy that
    would make `email` case-sensitive (and its UNIQUE with it) is refused."""
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, email TEXT COLLATE NOCASE UNIQUE)")

    losses = in_process(path, lambda batch_op: batch_op.alter_column(
        "email", type_=sa.String(320), existing_type=sa.Text))

    assert ("t", "COLLATE NOCASE of t.email") in losses, losses
    assert rows(path, "SELECT sql FROM sqlite_schema WHERE name = 't'") == [
        ("CREATE TABLE t (id INTEGER PRIMARY KEY, email TEXT COLLATE NOCASE UNIQUE)",)]
    # Naming the collation with the new type keeps it: nothing lost.
    assert in_process(path, lambda batch_op: batch_op.alter_column(
        "email", type_=sa.String(320, collation="NOCASE"), existing_type=sa.Text)) == []


def test_dropping_one_unique_keeps_another_on_the_same_column(tmp_path):
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, email TEXT, "
                     "CONSTRAINT uq_t_email UNIQUE (email), UNIQUE (email COLLATE NOCASE))")
    before = file_hash(path)

    losses = in_process(path, lambda batch_op: batch_op.drop_constraint("uq_t_email",
                                                                        type_="unique"))

    assert losses, "the copy dropped both UNIQUEs; only one was asked for"
    assert file_hash(path) == before
