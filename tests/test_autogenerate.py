"""Autogenerate that keeps data: renames, data-loss warnings, and `db check`."""
import pytest

LOCATION = "    clocation = db.Column(db.String, unique=False, nullable=False)\n"
CNAME = "    cname = db.Column(db.String, unique=True, nullable=False)\n"


def rename_location(project):
    project.edit_module(LOCATION, LOCATION.replace("clocation", "location"))


def new_revision(project, before):
    [path] = set((project.path / "migrations" / "versions").glob("*.py")) - before
    return path.read_text()


def versions(project):
    return set((project.path / "migrations" / "versions").glob("*.py"))


@pytest.fixture
def populated(project):
    assert project.db("upgrade")[0] == 0
    project.populate()
    return project


@pytest.mark.parametrize("command", [["migrate"], ["revision", "--autogenerate"]])
def test_a_column_rename_keeps_every_value(populated, command):
    project = populated
    locations = project.query("SELECT cid, clocation FROM company ORDER BY cid")
    rename_location(project)
    before = versions(project)

    code, output = project.db(*command, "-m", "rename", "-x", "rename=company.clocation:location")

    assert code == 0, output
    # Nothing is lost (on PostgreSQL, the rename is flagged for a rolling deploy: zero_downtime)
    assert [line for line in output.splitlines() if "WARNING" in line
            and not line.startswith("WARNING: rolling deploy: renaming column")] == [], output
    script = new_revision(project, before)
    assert "op.alter_column('company', 'clocation'" in script
    assert "new_column_name='location'" in script
    assert "batch_alter_table" not in script  # a native RENAME COLUMN, no table copy
    assert project.db("upgrade")[0] == 0
    assert project.query("SELECT cid, location FROM company ORDER BY cid") == locations
    assert project.db("check")[0] == 0

    code, output = project.db("downgrade")
    assert code == 0, output
    assert project.columns("company") == ["cid", "cname", "clocation"]
    assert project.query("SELECT cid, clocation FROM company ORDER BY cid") == locations


def test_two_renames_in_one_table(populated):
    project = populated
    rows = project.query("SELECT cid, cname, clocation FROM company ORDER BY cid")
    rename_location(project)
    project.edit_module(CNAME, CNAME.replace("cname", "name"))

    code, output = project.db("migrate", "-m", "renames", "-x", "rename=company.clocation:location",
                              "-x", "rename=company.cname:name")

    assert code == 0, output
    assert project.db("upgrade")[0] == 0
    assert project.query("SELECT cid, name, location FROM company ORDER BY cid") == rows
    constraints = {u["name"] for u in project.inspector().get_unique_constraints("company")}
    assert constraints == {"uq_company_name"}  # renamed with its column
    assert project.db("check")[0] == 0
    assert project.db("downgrade")[0] == 0
    assert project.query("SELECT cid, cname, clocation FROM company ORDER BY cid") == rows
    constraints = {u["name"] for u in project.inspector().get_unique_constraints("company")}
    assert constraints == {"uq_company_cname"}


def plain_indexes(project, table):
    """Index names, without the unique indexes PostgreSQL builds for unique constraints."""
    return [i["name"] for i in project.inspector().get_indexes(table)
            if not i.get("duplicates_constraint")]


def test_a_renamed_column_takes_its_index_along(populated):
    project = populated
    project.edit_module(LOCATION, LOCATION.replace("nullable=False", "nullable=False, index=True"))
    assert project.db("migrate", "-m", "index")[0] == 0
    assert project.db("upgrade")[0] == 0
    project.edit_module("    clocation = db.Column", "    location = db.Column")

    code, output = project.db("migrate", "-m", "rename", "-x", "rename=company.clocation:location")

    assert code == 0, output
    assert project.db("upgrade")[0] == 0
    assert plain_indexes(project, "company") == ["ix_company_location"]
    assert project.db("check")[0] == 0
    assert project.db("downgrade")[0] == 0
    assert plain_indexes(project, "company") == ["ix_company_clocation"]


def test_a_table_rename_keeps_every_row(populated):
    project = populated
    rows = project.query("SELECT * FROM company ORDER BY cid")
    project.edit_module("class Company(db.Model):\n",
                        "class Company(db.Model):\n    __tablename__ = \"firm\"\n")

    code, output = project.db("migrate", "-m", "firm", "-x", "rename=company:firm")

    assert code == 0, output
    assert project.db("upgrade")[0] == 0
    assert "company" not in project.tables()
    assert project.query("SELECT * FROM firm ORDER BY cid") == rows
    assert project.db("check")[0] == 0
    assert project.db("downgrade")[0] == 0
    assert "firm" not in project.tables()
    assert project.query("SELECT * FROM company ORDER BY cid") == rows


def test_without_an_answer_the_warning_names_the_x_option(populated):
    project = populated
    rename_location(project)
    before = versions(project)

    code, output = project.db("migrate", "-m", "unanswered")  # stdin is not a terminal

    assert code == 0, output
    assert (
        "WARNING: company.clocation is dropped and company.location created: every clocation "
        "value is lost. If it is a rename, run again with -x rename=company.clocation:location"
    ) in output
    script = new_revision(project, before)
    assert "drop_column('clocation')" in script and "add_column" in script


@pytest.mark.parametrize("answer", ["y", "n"])
def test_a_terminal_is_asked_about_renames(sqlite_project, answer):
    project = sqlite_project
    assert project.db("upgrade")[0] == 0
    rename_location(project)
    before = versions(project)

    code, output = project.db_on_terminal(["migrate", "-m", "asked"], answer)

    assert code == 0, output
    assert "Did you rename company.clocation to company.location? [y/N]" in output
    script = new_revision(project, before)
    assert ("new_column_name='location'" in script) == (answer == "y")


def test_warnings_for_dropped_columns_and_tables(populated):
    project = populated
    project.edit_module("    age = db.Column(db.Integer, unique=False, nullable=True)\n", "")
    model = "class Company(db.Model):\n"
    text = project.module.read_text()
    start = text.index(model)
    end = text.index("\n\n\n", start)
    project.module.write_text(text[:start] + text[end + 3:])

    code, output = project.db("migrate", "-m", "drops")

    assert code == 0, output
    assert "WARNING: upgrade drops column employee.age (values of 1000 rows)" in output
    assert "WARNING: upgrade drops table company (1000 rows)" in output


def test_warning_for_a_not_null_column_without_default(populated):
    project = populated
    project.edit_module("    age = db.Column(db.Integer, unique=False, nullable=True)\n",
                        "    age = db.Column(db.Integer, unique=False, nullable=True)\n"
                        "    badge = db.Column(db.Integer, nullable=True)\n")
    project.edit_module("    name = db.Column(db.String, unique=True, nullable=False)\n",
                        "    name = db.Column(db.String, unique=True, nullable=False)\n"
                        "    code = db.Column(db.String, nullable=False)\n")

    code, output = project.db("migrate", "-m", "not null")

    assert code == 0, output
    assert ("WARNING: upgrade makes employee.code NOT NULL without a default: it fails on a "
            "table with rows (employee has 1000 now); fill the column in the upgrade") in output
    assert "WARNING: upgrade makes employee.badge" not in output  # nullable: harmless


def test_warning_for_a_downgrade_that_cannot_run_on_rows(populated):
    project = populated
    project.edit_module(LOCATION, "")

    code, output = project.db("migrate", "-m", "drop clocation")

    assert code == 0, output
    assert ("WARNING: downgrade makes company.clocation NOT NULL without a default: it fails "
            "on a table with rows (company has 1000 now); fill the column in the downgrade"
            ) in output


def test_check_in_sync(project):
    assert project.db("upgrade")[0] == 0

    code, output = project.db("check")

    assert (code, output.strip()) == (0, "The models, the migrations' head and the database agree.")


def test_check_out_of_sync(project):
    assert project.db("upgrade")[0] == 0
    rename_location(project)
    project.edit_module("    age = db.Column(db.Integer, unique=False, nullable=True)\n",
                        "    age = db.Column(db.String, unique=False, nullable=True)\n")

    code, output = project.db("check")

    assert code == 1
    assert output.strip().splitlines() == [
        "column company.location: in the models, not in the database",
        "column company.clocation: in the database, not in the models",
        "column employee.age: type INTEGER in the database, VARCHAR in the models",
    ]


def test_check_database_behind_head(project):
    first, _, head = project.revisions()
    assert project.db("upgrade", first)[0] == 0

    code, output = project.db("check")

    assert code == 1
    lines = output.strip().splitlines()
    assert lines[0] == f"database at {first}, migrations' head is {head}: run `db upgrade`"
    assert "column employee.age: in the models, not in the database" in lines


def test_not_null_counts_the_nulls_that_block_it(populated):
    project = populated
    age = "    age = db.Column(db.Integer, unique=False, nullable=True)\n"
    project.edit_module(age, age.replace("nullable=True", "nullable=False"))

    before = versions(project)
    code, output = project.db("migrate", "-m", "age required")
    assert code == 0, output
    assert "WARNING: upgrade makes" not in output  # no employee has a NULL age

    project.execute("UPDATE employee SET age = NULL WHERE id <= 7")
    for path in versions(project) - before:
        path.unlink()
    code, output = project.db("migrate", "-m", "age required")
    assert code == 0, output
    assert ("WARNING: upgrade makes employee.age NOT NULL: it fails while 7 row(s) hold "
            "NULL there; fill them in the upgrade") in output


COMPOSITE = '''
class Solve(db.Model):
    id = db.Column(db.Integer, primary_key=True)
    challenge_id = db.Column(db.Integer, nullable=False)
    user_id = db.Column(db.Integer)
    team_id = db.Column(db.Integer)
    __table_args__ = (db.UniqueConstraint("challenge_id", "user_id"),
                      db.UniqueConstraint("challenge_id", "team_id"))

'''


def test_two_composite_unique_constraints_sharing_a_column_get_two_names(project):
    assert project.db("upgrade")[0] == 0
    project.edit_module('\nif __name__ == "__main__":', COMPOSITE + '\nif __name__ == "__main__":')

    code, output = project.db("migrate", "-m", "solves")
    assert code == 0, output
    code, output = project.db("upgrade")
    assert code == 0, output

    names = sorted(u["name"] for u in project.inspector().get_unique_constraints("solve"))
    assert names == ["uq_solve_challenge_id_team_id", "uq_solve_challenge_id_user_id"]
    assert project.db("check")[0] == 0


AUTOINCREMENT = '''
class Log(db.Model):
    __table_args__ = {"sqlite_autoincrement": True}
    id = db.Column(db.Integer, primary_key=True)
    line = db.Column(db.String)

'''


def test_sqlite_internal_tables_are_not_drift(sqlite_project):
    project = sqlite_project
    assert project.db("upgrade")[0] == 0
    project.edit_module('\nif __name__ == "__main__":', AUTOINCREMENT + '\nif __name__ == "__main__":')
    assert project.db("migrate", "-m", "log")[0] == 0
    assert project.db("upgrade")[0] == 0
    project.execute("INSERT INTO log (line) VALUES ('first')")
    assert "sqlite_sequence" in {r[0] for r in project.query("SELECT name FROM sqlite_master")}

    assert project.db("check") == (
        0, "The models, the migrations' head and the database agree.\n")
    before = versions(project)
    code, output = project.db("migrate", "-m", "nothing")
    assert code == 0 and "No changes in schema detected" in output, output
    assert versions(project) == before


def test_lock_hazards_are_named_on_postgresql(populated, backend):
    project = populated
    project.edit_module("    age = db.Column(db.Integer, unique=False, nullable=True)\n",
                        "    age = db.Column(db.BigInteger, unique=False, nullable=False, "
                        "index=True)\n"
                        "    token = db.Column(db.String, server_default=db.text("
                        "\"md5(random()::text)\"))\n")
    project.execute("UPDATE employee SET age = 30")

    code, output = project.db("migrate", "-m", "hazards", "--plain")  # not zero_downtime's

    assert code == 0, output
    hazards = [line for line in output.splitlines() if line.startswith("WARNING: lock hazard")]
    if backend == "sqlite":  # no lock queue to pile up: SQLite locks the whole file
        assert hazards == [], output
        return
    assert hazards == [
        ("WARNING: lock hazard: adding employee.token with a volatile default rewrites employee "
        "(1000 rows) under an ACCESS EXCLUSIVE lock; add it without a default, fill it in "
        "batches, then set the default"),
        ("WARNING: lock hazard: changing the type of employee.age to BIGINT may rewrite employee "
        "(1000 rows) under an ACCESS EXCLUSIVE lock; add a new column, fill it in batches, then "
        "switch"),
        ("WARNING: lock hazard: SET NOT NULL on employee.age scans employee (1000 rows) under an "
        "ACCESS EXCLUSIVE lock; first add CHECK (age IS NOT NULL) NOT VALID and VALIDATE it"),
        ("WARNING: lock hazard: CREATE INDEX ix_employee_age blocks writes to employee (1000 "
        "rows) while it builds; create it with postgresql_concurrently=True inside "
        "op.get_context().autocommit_block()"),
    ], output


def test_library_warnings_become_one_note(populated):
    project = populated
    project.execute("CREATE INDEX ix_company_lower_cname ON company (lower(cname))")
    before = versions(project)

    code, output = project.db("migrate", "-m", "nothing")

    assert code == 0, output
    assert "Warning" not in output, output
    assert output.count("NOTE: index ix_company_lower_cname is on an expression, which "
                        "autogenerate cannot compare: it is left as it is") == 1, output
    assert versions(project) == before
