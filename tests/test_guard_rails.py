"""What the tool refuses to do silently: lose child rows, create databases by accident,
adopt a database it did not make, drop data without asking, run an edited revision."""
import re
import shutil
import socket

import pytest
from conftest import CLIS, file_hash

CHILD_TABLES = """
    def upgrade():
        op.create_table(
            "badge",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("employee_id", sa.Integer,
                      sa.ForeignKey("employee.id", name="fk_badge_employee_id_employee",
                                    ondelete="CASCADE"), nullable=False),
        )
        op.create_table(
            "desk",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("employee_id", sa.Integer,
                      sa.ForeignKey("employee.id", name="fk_desk_employee_id_employee")),
        )
        op.execute("INSERT INTO badge (id, employee_id) SELECT id, id FROM employee")
        op.execute("INSERT INTO desk (id, employee_id) SELECT id, id FROM employee")


    def downgrade():
        op.drop_table("desk")
        op.drop_table("badge")
"""

PARENT_COPY = """
    def copy():
        # A table copy on SQLite, forced even where SQLite could ALTER; ALTERs elsewhere.
        return "always" if op.get_context().dialect.name == "sqlite" else "auto"


    def upgrade():
        with op.batch_alter_table("employee", recreate=copy()) as batch_op:
            batch_op.drop_column("age")
        with op.batch_alter_table("employee", recreate=copy()) as batch_op:
            batch_op.alter_column("name", new_column_name="full_name")


    def downgrade():
        with op.batch_alter_table("employee", recreate=copy()) as batch_op:
            batch_op.alter_column("full_name", new_column_name="name")
        with op.batch_alter_table("employee", recreate=copy()) as batch_op:
            batch_op.add_column(sa.Column("age", sa.Integer))
"""


@pytest.fixture(params=CLIS)
def cli(request):
    """Every guarantee here holds through both CLIs: the Manager and `flask db`."""
    return request.param


@pytest.fixture
def with_children(project):
    """The project at head, 1,000 employees, each with a badge (ON DELETE CASCADE) and a
    desk (a plain foreign key)."""
    assert project.db("upgrade")[0] == 0
    project.populate()
    project.add_revision("child001", CHILD_TABLES)
    code, output = project.db("upgrade")
    assert code == 0, output
    return project


def test_child_rows_survive_a_batch_copy_of_their_parent(with_children):
    project = with_children
    project.add_revision("copy0001", PARENT_COPY)

    code, output = project.db("upgrade")
    assert code == 0, output
    assert project.columns("employee") == ["id", "full_name"]
    assert project.query("SELECT count(*) FROM badge") == [(1000,)]
    assert project.query("SELECT count(*) FROM desk") == [(1000,)]

    code, output = project.db("downgrade")
    assert code == 0, output
    assert project.columns("employee") == ["id", "name", "age"]
    assert project.query("SELECT count(*) FROM badge") == [(1000,)]
    assert project.query("SELECT count(*) FROM desk") == [(1000,)]


def test_a_revision_that_breaks_a_foreign_key_is_rolled_back(with_children):
    project = with_children
    project.add_revision("orphan01", """
        def upgrade():
            with op.batch_alter_table("employee") as batch_op:
                batch_op.drop_column("age")
            op.execute("DELETE FROM employee WHERE id <= 10")
    """)
    before = project.state()

    code, output = project.db("upgrade", "-x", "backup=off")

    assert code == 1
    if project.database_url.startswith("sqlite"):
        assert output.strip().endswith(
            "Error: foreign key check failed, revision rolled back: "
            "10 row(s) of badge refer to missing employee rows; "
            "10 row(s) of desk refer to missing employee rows"), output
    else:  # PostgreSQL enforces the key at once
        assert 'violates foreign key constraint "fk_desk_employee_id_employee"' in output
    assert project.state() == before


# --- SQLite files are created only on purpose -------------------------------------------


@pytest.mark.parametrize("args", [["current"], ["downgrade"], ["migrate", "-m", "x"],
                                  ["stamp", "head", "--sql"], ["check"],
                                  ["restore", "backups/data.snapshot.db"]])
def test_a_mistyped_sqlite_path_creates_nothing(sqlite_project, args):
    typo = sqlite_project.path / "dta.db"
    assert sqlite_project.db("upgrade")[0] == 0
    (sqlite_project.path / "backups").mkdir()
    shutil.copy(sqlite_project.path / "data.db", sqlite_project.path / "backups" / "data.snapshot.db")
    before = files(sqlite_project)

    code, output = sqlite_project.db(*args, env={"DATABASE_URL": f"sqlite:///{typo}"})

    if args[0] == "stamp":  # offline: prints SQL, opens nothing
        assert code == 0
    else:
        assert code == 1, output
        if args[0] == "restore":  # onto a missing file, only if asked (test_snapshots.py)
            assert output.startswith(f"Error: no database at {typo} (check DATABASE_URL), "
                                     "and backups/data.snapshot.db is not named"), output
        else:
            assert output.splitlines()[-1] == (
                "Error: Target database is not up to date. Run `db upgrade` first."
                if args[0] == "migrate" else
                f"Error: no database at {typo} (check DATABASE_URL); only `db upgrade` creates one")
    assert files(sqlite_project) == before


def files(project):
    """The project's folder and its backups/, with each file's size."""
    return {(p.name, p.stat().st_size) for folder in (project.path, project.path / "backups")
            for p in folder.iterdir()}


def test_a_mistyped_path_is_named(sqlite_project):
    typo = sqlite_project.path / "dta.db"

    code, output = sqlite_project.db("current", env={"DATABASE_URL": f"sqlite:///{typo}"})

    assert code == 1
    assert output.strip() == (
        f"Error: no database at {typo} (check DATABASE_URL); only `db upgrade` creates one")


def test_upgrade_announces_a_new_database(sqlite_project):
    code, output = sqlite_project.db("upgrade")

    assert code == 0
    assert f"Creating new database at {sqlite_project.path / 'data.db'}" in output


def test_a_sqlite_uri_is_a_uri(sqlite_project):
    assert sqlite_project.db("upgrade")[0] == 0
    data = sqlite_project.path / "data.db"
    before = file_hash(data)
    read_only = {"DATABASE_URL": "sqlite:///file:data.db?mode=ro&uri=true"}

    code, output = sqlite_project.db("current", env=read_only)
    assert code == 0 and sqlite_project.revisions()[-1] in output, output

    code, output = sqlite_project.db("downgrade", "-x", "backup=off", env=read_only)
    assert code == 1
    assert output.strip().endswith(": attempt to write a readonly database"), output
    assert sorted(p.name for p in sqlite_project.path.iterdir() if "data" in p.name) == [
        "data.db"]
    assert file_hash(data) == before


# --- adopting a database these migrations did not make ----------------------------------


def test_upgrade_refuses_tables_it_did_not_make(project):
    project.execute("CREATE TABLE company (cid INTEGER PRIMARY KEY, cname VARCHAR NOT NULL "
                    "UNIQUE, clocation VARCHAR NOT NULL)")
    before = project.state()

    code, output = project.db("upgrade")

    assert code == 1
    assert "already has tables (company) but no alembic_version" in output
    assert "`db stamp REVISION`" in output
    assert project.state() == before
    assert "alembic_version" not in project.tables()


def test_stamp_adopts_an_existing_database(project):
    first = project.revisions()[0]
    # Made by hand, as the first revision would have made them.
    project.execute("CREATE TABLE company (cid INTEGER NOT NULL, cname VARCHAR NOT NULL, "
                    "clocation VARCHAR NOT NULL, CONSTRAINT pk_company PRIMARY KEY (cid), "
                    "CONSTRAINT uq_company_cname UNIQUE (cname))")
    project.execute("CREATE TABLE employee (id INTEGER NOT NULL, name VARCHAR NOT NULL, "
                    "email VARCHAR NOT NULL, CONSTRAINT pk_employee PRIMARY KEY (id), "
                    "CONSTRAINT uq_employee_name UNIQUE (name), "
                    "CONSTRAINT uq_employee_email UNIQUE (email))")
    project.populate()

    assert project.db("stamp", first)[0] == 0
    code, output = project.db("upgrade")

    assert code == 0, output
    assert project.columns("employee") == ["id", "name", "age"]
    assert project.query("SELECT count(*) FROM employee") == [(1000,)]


# --- destructive downgrades ask first ---------------------------------------------------


def test_downgrade_to_base_without_a_terminal_needs_yes(project):
    assert project.db("upgrade")[0] == 0
    project.populate()
    before = project.state()

    code, output = project.db("downgrade", "base")

    assert code == 1
    assert output.strip() == (
        "Error: downgrade to base drops employee (1000 rows), company (1000 rows); "
        "nothing changed. To go ahead, add -x yes")
    assert project.state() == before


def test_a_downgrade_that_drops_rows_needs_yes(with_children):
    before = with_children.state()

    code, output = with_children.db("downgrade")

    assert code == 1
    assert "this downgrade drops desk (1000 rows), badge (1000 rows)" in output
    assert with_children.state() == before
    assert with_children.db("downgrade", "-x", "yes")[0] == 0
    assert "badge" not in with_children.tables()


@pytest.mark.parametrize("answer", ["n", "y"])
def test_downgrade_to_base_asks_on_a_terminal(sqlite_project, answer):
    assert sqlite_project.db("upgrade")[0] == 0
    sqlite_project.populate()
    before = sqlite_project.state()

    code, output = sqlite_project.db_on_terminal(["downgrade", "base"], answer)

    assert "downgrade to base drops employee (1000 rows), company (1000 rows). Continue? [y/N]" \
        in output
    if answer == "n":
        assert code == 1 and "downgrade cancelled; nothing changed" in output
        assert sqlite_project.state() == before
    else:
        assert code == 0, output
        assert sqlite_project.tables() - {"migration_database"} == {"alembic_version", "migration_checksums"}


ARCHIVE = """
    def upgrade():
        op.create_table("archive", sa.Column("id", sa.Integer, primary_key=True))
        op.execute("INSERT INTO archive (id) VALUES (1), (2), (3)")


    def downgrade():
        for table in ["archive"]:  # no op.drop_table('...') for the source to show
            op.execute(f"DROP TABLE {table}")
"""


@pytest.fixture
def with_archive(project):
    assert project.db("upgrade")[0] == 0
    project.add_revision("archive1", ARCHIVE)
    assert project.db("upgrade", "-x", "backup=off")[0] == 0
    return project


def test_a_downgrade_that_drops_rows_by_any_statement_needs_yes(with_archive):
    project = with_archive
    before = project.state()

    code, output = project.db("downgrade", "-x", "backup=off")

    assert code == 1
    assert output.splitlines()[-1] == (
        "Error: the downgrade of archive1 dropped archive (3 rows); that revision was rolled "
        "back. To go ahead, add -x yes")
    assert project.state() == before
    assert project.db("downgrade", "-x", "backup=off", "-x", "yes")[0] == 0
    assert "archive" not in project.tables()


@pytest.mark.parametrize("answer", ["n", "y"])
def test_a_downgrade_that_drops_rows_by_any_statement_asks(with_archive, answer):
    project = with_archive
    before = project.state()

    code, output = project.db_on_terminal(["downgrade", "-x", "backup=off"], answer)

    assert "the downgrade of archive1 dropped archive (3 rows). Keep it? [y/N]" in output
    if answer == "n":
        assert code == 1 and "downgrade cancelled; that revision was rolled back" in output
        assert project.state() == before
    else:
        assert code == 0, output
        assert "archive" not in project.tables()


# --- a server that does not answer ------------------------------------------------------


def test_a_silent_server_times_out(sqlite_project):
    with socket.socket() as silent:  # accepts TCP connections, never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"postgresql://u:p@127.0.0.1:{silent.getsockname()[1]}/x"

        code, output = sqlite_project.db(
            "current", env={"DATABASE_URL": url, "MIGRATE_CONNECT_TIMEOUT": "2"}, timeout=30)

    assert code == 1
    assert output.strip().startswith("Error: connection to server at \"127.0.0.1\"")
    assert "timeout expired" in output
    assert len(output.strip().splitlines()) == 1


# --- revisions edited after they were applied -------------------------------------------


def test_an_edited_applied_revision_is_refused_until_repaired(project):
    first, second, head = project.revisions()
    assert project.db("upgrade", second)[0] == 0
    project.populate()
    edited = next((project.path / "migrations" / "versions").glob(f"{first}_*.py"))
    edited.write_text(edited.read_text() + "\n# edited after it was applied\n")
    before = project.state()

    for args in (["upgrade"], ["downgrade", "-x", "yes"]):
        code, output = project.db(*args)
        assert code == 1
        assert output.strip() == (
            f"Error: {edited} changed after revision {first} was applied (its sha256 differs); "
            "put the file back, or run `db repair` if the change was deliberate")
        assert project.state() == before

    code, output = project.db("repair")
    assert code == 0 and "Recorded the checksums of 2 applied revision(s)" in output
    code, output = project.db("upgrade")
    assert code == 0, output
    assert project.version() == head


def test_history_shows_when_revisions_were_applied(project):
    first, second, head = project.revisions()
    assert project.db("upgrade", second)[0] == 0

    code, output = project.db("history", "--applied")

    assert code == 0, output
    lines = output.strip().splitlines()
    assert lines[0].startswith(f"{head}  not applied")
    assert lines[1].startswith(f"{second}  applied 20") and lines[1].endswith("add employee age")
    assert lines[2].startswith(f"{first}  applied 20")
    assert re.search(r"applied 20\S+ \S+ in \d+\.\d\d s", lines[1]), lines


def test_a_checksum_table_from_an_earlier_version_gets_its_new_column(project):
    second = project.revisions()[1]
    assert project.db("upgrade", second)[0] == 0
    # As an earlier version made it: no seconds column.
    rows = project.query("SELECT revision, checksum, applied_at FROM migration_checksums")
    project.execute("DROP TABLE migration_checksums")
    project.execute("CREATE TABLE migration_checksums (revision VARCHAR(32) PRIMARY KEY, "
                    "checksum VARCHAR(64) NOT NULL, applied_at TIMESTAMP NOT NULL)")
    for revision, checksum, applied_at in rows:
        project.execute("INSERT INTO migration_checksums VALUES (:r, :c, :a)",
                        {"r": revision, "c": checksum, "a": applied_at})
    code, output = project.db("history", "--applied")
    assert code == 0 and f"{second}  applied 20" in output, output

    assert project.db("upgrade")[0] == 0

    lines = project.db("history", "--applied")[1].strip().splitlines()
    assert re.search(r"applied 20\S+ \S+ in \d+\.\d\d s", lines[0]), lines
    assert " in " not in lines[1], lines  # applied before the column existed


def test_checksums_are_stored_beside_alembic_version(project):
    assert project.db("upgrade")[0] == 0

    recorded = dict(project.query("SELECT revision, checksum FROM migration_checksums"))

    versions = project.path / "migrations" / "versions"
    assert recorded == {rev: file_hash(next(versions.glob(f"{rev}_*.py")))
                        for rev in project.revisions()}
