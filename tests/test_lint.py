"""`db lint`: each revision's operations that lock or break a live database, named with the
revision file and line and the safer pattern, for CI (exit 1 on a finding).

PostgreSQL: the revisions rendered offline and parsed by PostgreSQL's parser (pglast);
SQLite: table copies and drops of a scratch run. The rules themselves are pure logic, tested
in-process on SQL; the command through both CLIs on real databases."""
import textwrap

import pytest
from conftest import CLIS

from safe_migrate import lint

TUTORIAL_DROP = "migrations/versions/edee0e2ae9aa_drop_employee_email.py"


@pytest.fixture(params=CLIS)
def cli(request):
    return request.param


def line_of(path, code):
    """The line of the revision file holding `code` (the test's oracle for file:line)."""
    lines = path.read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if code in line)


def relative(project, path):
    return path.relative_to(project.path).as_posix()


# --- the rules, in-process, on SQL as Alembic writes it offline --------------------------


@pytest.mark.parametrize("sql, rule", [
    ("CREATE INDEX ix ON employee (age)", "require-concurrent-index-creation"),
    ("DROP INDEX ix", "require-concurrent-index-deletion"),
    ("BEGIN;\nCREATE INDEX CONCURRENTLY ix ON employee (age)",
     "ban-concurrent-index-creation-in-transaction"),
    ("BEGIN;\nDROP INDEX CONCURRENTLY ix", "ban-concurrent-index-creation-in-transaction"),
    ("ALTER TABLE employee ADD CONSTRAINT ck CHECK (age > 0)", "constraint-missing-not-valid"),
    ("ALTER TABLE employee ADD CONSTRAINT fk FOREIGN KEY(cid) REFERENCES company (cid)",
     "constraint-missing-not-valid"),
    (("BEGIN;\nALTER TABLE employee ADD CONSTRAINT ck CHECK (age > 0) NOT VALID;\n"
     "ALTER TABLE employee VALIDATE CONSTRAINT ck"), "constraint-missing-not-valid"),
    ("ALTER TABLE employee ADD CONSTRAINT uq UNIQUE (age)", "disallowed-unique-constraint"),
    ("ALTER TABLE employee ALTER COLUMN age SET NOT NULL", "adding-not-nullable-field"),
    ("ALTER TABLE employee ADD COLUMN code TEXT NOT NULL", "adding-required-field"),
    ("ALTER TABLE employee ALTER COLUMN age TYPE BIGINT", "changing-column-type"),
    ("ALTER TABLE employee RENAME COLUMN age TO years", "renaming-column"),
    ("ALTER TABLE employee RENAME TO staff", "renaming-table"),
    ("ALTER TABLE employee DROP COLUMN age", "ban-drop-column"),
    ("DROP TABLE employee", "ban-drop-table"),
])
def test_each_rule_names_its_statement(sql, rule):
    found = lint.check_sql(sql)

    assert [f.rule for f in found] == [rule]
    assert found[0].line == sql.count("\n") + 1
    assert lint.RULES[rule] in found[0].text(None)


@pytest.mark.parametrize("sql", [
    "COMMIT;\nCREATE INDEX CONCURRENTLY ix ON employee (age);\nBEGIN",
    "COMMIT;\nDROP INDEX CONCURRENTLY ix;\nBEGIN",
    "ALTER TABLE employee ADD CONSTRAINT ck CHECK (age > 0) NOT VALID",
    ("BEGIN;\nALTER TABLE employee ADD CONSTRAINT ck CHECK (age > 0) NOT VALID;\nCOMMIT;\n"
    "ALTER TABLE employee VALIDATE CONSTRAINT ck"),
    "ALTER TABLE employee ADD CONSTRAINT uq UNIQUE USING INDEX ix",
    "ALTER TABLE employee ADD COLUMN code TEXT NOT NULL DEFAULT 'x'",
    "ALTER TABLE employee ADD COLUMN nickname TEXT",
    # A table the revision creates is empty: building on it locks nothing anyone waits for.
    ("CREATE TABLE side (id INT, age INT);\nCREATE INDEX ix ON side (age);\n"
    "ALTER TABLE side ADD CONSTRAINT ck CHECK (age > 0)"),
])
def test_the_safe_patterns_pass(sql):
    assert lint.check_sql(sql) == []


def test_waivers_are_read_from_comments_with_a_reason(tmp_path):
    path = tmp_path / "rev.py"
    path.write_text(textwrap.dedent("""\
        def upgrade():
            # safe-migrate: allow ban-drop-column -- nothing reads age since 2.3
            op.drop_column("employee", "age")
            op.drop_table("old")  # safe-migrate: allow ban-drop-table, renaming-table -- gone
            x = "# safe-migrate: allow ban-drop-table -- inside a string, not a comment"
            # safe-migrate: allow ban-drop-column
            # safe-migrate: allow no-such-rule -- why
    """))

    waivers, bad = lint.read_waivers(str(path))

    assert [(w.rules, w.reason, w.lines) for w in waivers] == [
        ({"ban-drop-column"}, "nothing reads age since 2.3", {2, 3}),
        ({"ban-drop-table", "renaming-table"}, "gone", {4})]
    assert [(f.rule, f.line) for f in bad] == [("invalid-waiver", 6), ("invalid-waiver", 7)]
    assert "gives no reason" in bad[0].message and "no-such-rule" in bad[1].message


def test_github_annotations_escape_what_github_reads():
    finding = lint.Finding("ban-drop-column", "", 3, "x")
    line = lint.format_finding(finding, "100% sure,\nreally: yes", "github")
    assert line == "::error file=?,line=3,title=ban-drop-column::100%25 sure,%0Areally: yes"


# --- PostgreSQL, through both CLIs ----------------------------------------------------------

PLAIN_INDEX = """
    def upgrade():
        op.create_index("ix_employee_age", "employee", ["age"])


    def downgrade():
        op.drop_index("ix_employee_age", "employee")
"""

SAFE = """
    def upgrade():
        with op.get_context().autocommit_block():
            op.create_index("ix_employee_age", "employee", ["age"],
                            postgresql_concurrently=True)
        op.add_column("employee", sa.Column("cid", sa.Integer))
        op.create_foreign_key("fk_employee_cid_company", "employee", "company", ["cid"], ["cid"],
                              postgresql_not_valid=True)
        with op.get_context().autocommit_block():
            op.execute("ALTER TABLE employee VALIDATE CONSTRAINT fk_employee_cid_company")


    def downgrade():
        op.drop_constraint("fk_employee_cid_company", "employee")
        op.drop_column("employee", "cid")
        op.drop_index("ix_employee_age", "employee")
"""

CHECK_BY_HAND = """
    def upgrade():
        op.add_column("employee", sa.Column("level", sa.Integer))
        op.execute("ALTER TABLE employee ADD CONSTRAINT ck_employee_age CHECK (age > 17)")


    def downgrade():
        pass
"""

DROP_AGE = """
    def upgrade():
        # safe-migrate: allow ban-drop-column{reason}
        op.drop_column("employee", "age")


    def downgrade():
        op.add_column("employee", sa.Column("age", sa.Integer))
"""


@pytest.fixture
def pg_project(make_project, new_pg_database):
    """The project on a fresh PostgreSQL database that nothing has been applied to."""
    return make_project(database_url=new_pg_database())


@pytest.mark.postgresql
def test_a_plain_create_index_is_named_with_its_file_line_and_table_size(pg_project):
    assert pg_project.db("upgrade")[0] == 0
    pg_project.populate(rows=1000)
    pg_project.execute("ANALYZE employee")
    path = pg_project.add_revision("a1", PLAIN_INDEX)

    code, out = pg_project.db("lint", "a1")

    assert code == 1, out
    where = f"{relative(pg_project, path)}:{line_of(path, 'op.create_index')}"
    assert f"{where}: require-concurrent-index-creation: CREATE INDEX ix_employee_age blocks " \
           "writes to employee while it builds (employee: ~1,000 rows, " in out
    assert lint.RULES["require-concurrent-index-creation"] in out
    assert "1 finding(s) in 1 revision(s)" in out


@pytest.mark.postgresql
def test_the_safe_patterns_pass_and_run(pg_project):
    assert pg_project.db("upgrade")[0] == 0
    pg_project.add_revision("a1", SAFE)

    code, out = pg_project.db("lint", "a1")

    assert code == 0, out
    assert "0 finding(s) in 1 revision(s)" in out
    assert pg_project.db("upgrade")[0] == 0
    assert pg_project.query("SELECT convalidated FROM pg_constraint "
                            "WHERE conname = 'fk_employee_cid_company'") == [(True,)]


@pytest.mark.postgresql
def test_a_check_added_by_hand_without_not_valid_is_found(pg_project):
    path = pg_project.add_revision("a1", CHECK_BY_HAND)

    code, out = pg_project.db("lint", "a1")

    assert code == 1, out
    assert f"{relative(pg_project, path)}:{line_of(path, 'op.execute')}: " \
           "constraint-missing-not-valid: ADD CONSTRAINT ck_employee_age CHECK" in out


@pytest.mark.postgresql
def test_github_format_prints_one_annotation(pg_project):
    path = pg_project.add_revision("a1", PLAIN_INDEX)

    code, out = pg_project.db("lint", "a1", "--format", "github")

    assert code == 1, out
    assert out.splitlines() == [
        f"::error file={relative(pg_project, path)},line={line_of(path, 'op.create_index')},"
        "title=require-concurrent-index-creation::CREATE INDEX ix_employee_age blocks writes to "
        "employee while it builds (employee: not in the database yet); "
        + lint.RULES["require-concurrent-index-creation"]]


@pytest.mark.postgresql
def test_a_waiver_with_a_reason_is_honoured_one_without_is_refused(pg_project):
    head = pg_project.revisions()[-1]
    pg_project.add_revision("a1", DROP_AGE.format(reason=" -- no code reads age since 2.3"))
    assert pg_project.db("lint", "a1") == (0, "0 finding(s) in 1 revision(s)\n")

    path = pg_project.add_revision("a1", DROP_AGE.format(reason=""), down_revision=head)
    code, out = pg_project.db("lint", "a1")

    assert code == 1, out
    file = relative(pg_project, path)
    assert f"{file}:{line_of(path, 'safe-migrate:')}: invalid-waiver: waiver of " \
           "ban-drop-column gives no reason" in out
    assert f"{file}:{line_of(path, 'op.drop_column')}: ban-drop-column: drops employee.age" in out


@pytest.mark.postgresql
def test_since_lints_only_the_later_revisions(pg_project):
    head = pg_project.revisions()[-1]
    pg_project.add_revision("a1", PLAIN_INDEX)
    pg_project.add_revision("a2", SAFE.replace("ix_employee_age", "ix_employee_name")
                            .replace('["age"]', '["name"]'), down_revision="a1")

    assert pg_project.db("lint", "--since", "a1")[0] == 0
    code, out = pg_project.db("lint", "--since", head)
    assert code == 1 and "a1_test.py" in out and "2 revision(s)" in out, out


@pytest.mark.postgresql
def test_the_tutorials_history_names_its_dropped_column_on_postgresql(pg_project):
    code, out = pg_project.db("lint")

    assert code == 1, out
    assert out.splitlines() == [
        f"{TUTORIAL_DROP}:20: ban-drop-column: drops employee.email: code still running that "
        "reads it fails (employee: not in the database yet); " + lint.RULES["ban-drop-column"],
        "1 finding(s) in 3 revision(s)"]


EVERY_OP = """
    def upgrade():
        op.create_index("ix_employee_age", "employee", ["age"], postgresql_concurrently=True)
        op.alter_column("employee", "age", nullable=False)
        op.alter_column("employee", "age", type_=sa.BigInteger)
        op.add_column("employee", sa.Column("code", sa.String, nullable=False))
        op.create_unique_constraint("uq_employee_age", "employee", ["age"])
        op.alter_column("employee", "name", new_column_name="full_name")
        op.rename_table("company", "firm")
        op.drop_index("ix_employee_age", "employee")
        op.drop_table("firm")


    def downgrade():
        pass
"""


@pytest.mark.postgresql
def test_alembics_operations_are_named_at_their_lines(pg_project):
    path = pg_project.add_revision("a1", EVERY_OP)

    code, out = pg_project.db("lint", "a1")

    assert code == 1, out
    found = [(line.split(": ")[0].rsplit(":", 1)[1], line.split(": ")[1])
             for line in out.splitlines()[:-1]]
    expected = [
        ("op.create_index", "ban-concurrent-index-creation-in-transaction"),
        ("nullable=False)", "adding-not-nullable-field"),
        ("type_=sa.BigInteger", "changing-column-type"),
        ('"code"', "adding-required-field"),
        ("op.create_unique_constraint", "disallowed-unique-constraint"),
        ("new_column_name", "renaming-column"),
        ("op.rename_table", "renaming-table"),
        ("op.drop_index", "require-concurrent-index-deletion"),
        ("op.drop_table", "ban-drop-table"),
    ]
    assert found == [(str(line_of(path, code)), rule) for code, rule in expected]


# --- SQLite --------------------------------------------------------------------------------

DROP_NAME = """
    def upgrade():
        with op.batch_alter_table("employee") as batch_op:
            batch_op.drop_column("name")
        op.drop_table("company")


    def downgrade():
        pass
"""


def test_a_drop_column_that_copies_a_big_sqlite_table_and_a_drop_table_are_named(
        sqlite_project):
    project = sqlite_project
    assert project.db("upgrade")[0] == 0
    project.execute("WITH RECURSIVE i(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM i "
                    "WHERE n < 100000) INSERT INTO employee (name, age) SELECT 'e' || n, 30 "
                    "FROM i")
    # name is UNIQUE: SQLite cannot drop it in place, so the batch copies employee.
    path = project.add_revision("a1", DROP_NAME)

    code, out = project.db("lint", "a1")

    assert code == 1, out
    where = f"{relative(project, path)}:{line_of(path, 'batch_alter_table')}"
    assert out.splitlines() == [
        f"{where}: ban-drop-column: drops employee.name, by copying employee: code still "
        "running that reads it fails (employee: 100,000 rows in the database); "
        + lint.RULES["ban-drop-column"],
        f"{where}: sqlite-table-copy: copies employee (a new table, every row, then a rename) "
        "under the write lock (employee: 100,000 rows in the database); "
        + lint.RULES["sqlite-table-copy"],
        f"{relative(project, path)}:{line_of(path, 'op.drop_table')}: ban-drop-table: drops "
        "table company: code still running that reads it fails (company: 0 rows in the "
        "database); " + lint.RULES["ban-drop-table"],
        "3 finding(s) in 1 revision(s)"]


def test_the_tutorials_history_names_its_dropped_column_on_sqlite(sqlite_project):
    code, out = sqlite_project.db("lint")

    assert code == 1, out
    assert out.splitlines() == [
        f"{TUTORIAL_DROP}:20: ban-drop-column: drops employee.email, by copying employee: code "
        "still running that reads it fails; " + lint.RULES["ban-drop-column"],
        f"{TUTORIAL_DROP}:20: notice: sqlite-table-copy: copies employee (a new table, every "
        "row, then a rename) under the write lock; " + lint.RULES["sqlite-table-copy"],
        "1 finding(s), 1 note(s) in 3 revision(s) (no database reachable: rules only)"]
    assert not (sqlite_project.path / "data.db").exists()


def test_without_a_reachable_postgresql_the_rules_alone_run(make_project):
    # Nothing listens on port 1: the revisions are still rendered offline and linted.
    project = make_project(database_url="postgresql://nobody:secret@127.0.0.1:1/none")

    code, out = project.db("lint")

    assert code == 1, out
    assert out.splitlines() == [
        f"{TUTORIAL_DROP}:20: ban-drop-column: drops employee.email: code still running that "
        "reads it fails; " + lint.RULES["ban-drop-column"],
        "1 finding(s) in 3 revision(s) (no database reachable: rules only)"]


def test_lint_has_its_help(sqlite_project):
    code, output = sqlite_project.db("lint", "--help")

    assert code == 0, output
    text = " ".join(output.split())
    assert "exit 1 on a finding" in text and "--since" in text and "--format" in text
