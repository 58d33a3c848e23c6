"""PostgreSQL: revisions that leave the transaction (autocommit_block, a COMMIT) run
correctly in `db upgrade`, and a rehearsal never commits (it runs an autocommit_block's
statements in its transaction), nor leaves a sequence advanced."""
import signal
import subprocess
import threading

import pytest
import sqlalchemy as sa
from conftest import CLIS

pytestmark = pytest.mark.postgresql

CONCURRENT_INDEX = """
    def upgrade():
        with op.get_context().autocommit_block():
            op.create_index("ix_employee_age", "employee", ["age"], postgresql_concurrently=True)


    def downgrade():
        op.drop_index("ix_employee_age", "employee")
"""

# Work in the transaction, then a unique index that the duplicate ages make fail.
COLUMN_THEN_FAILING_INDEX = """
    def upgrade():
        op.add_column("employee", sa.Column("nickname", sa.String))
        with op.get_context().autocommit_block():
            op.create_index("uq_employee_age", "employee", ["age"], unique=True,
                            postgresql_concurrently=True)


    def downgrade():
        op.drop_column("employee", "nickname")
"""

COMMITS_IN_THE_MIDDLE = """
    def upgrade():
        op.add_column("employee", sa.Column("nickname", sa.String))
        op.execute("UPDATE employee SET age = age + 100")
        op.execute("COMMIT")
        op.create_table("side", sa.Column("id", sa.Integer, primary_key=True))


    def downgrade():
        pass
"""

# Work in the transaction, then a statement outside it that waits for the test's advisory lock.
COLUMN_THEN_WAITING = """
    def upgrade():
        op.add_column("employee", sa.Column("nickname", sa.String))
        with op.get_context().autocommit_block():
            op.execute("SELECT pg_advisory_lock(4242)")


    def downgrade():
        op.drop_column("employee", "nickname")
"""

# A statement no transaction can hold, whatever the rehearsal does with the block.
VACUUMS = """
    def upgrade():
        with op.get_context().autocommit_block():
            op.execute("VACUUM employee")


    def downgrade():
        pass
"""

INSERTS_ROWS = """
    def upgrade():
        op.execute("INSERT INTO employee (name, age) VALUES ('new one', 30), ('new two', 31)")


    def downgrade():
        op.execute("DELETE FROM employee WHERE name LIKE 'new %'")
"""


@pytest.fixture
def backend():
    return "postgresql"


@pytest.fixture(params=CLIS)
def cli(request):
    """Both CLIs: the Manager and `flask db`."""
    return request.param


@pytest.fixture
def at_head(project):
    """The project at its head, 100 rows, employee's id sequence where the rows leave it."""
    assert project.db("upgrade")[0] == 0
    project.populate(rows=100)
    project.execute("SELECT setval('employee_id_seq', (SELECT max(id) FROM employee))")
    return project


def index_valid(project, name):
    """pg_index.indisvalid of the index, or None when there is no such index."""
    rows = project.query("SELECT i.indisvalid FROM pg_index i JOIN pg_class c "
                         "ON c.oid = i.indexrelid WHERE c.relname = :name", name=name)
    return rows[0][0] if rows else None


def fingerprint(project):
    """Schema (from the catalogs), every row of every table, every sequence's value."""
    columns = project.query(
        "SELECT table_schema, table_name, column_name, data_type, is_nullable, "
        "column_default FROM information_schema.columns WHERE table_schema = 'public' "
        "ORDER BY 1, 2, 3")
    indexes = project.query("SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes "
                            "WHERE schemaname = 'public' ORDER BY 1, 2, 3")
    constraints = project.query(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2")
    tables = [name for (name,) in project.query(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]
    rows = {table: project.query(f'SELECT * FROM "{table}" ORDER BY 1') for table in tables}
    sequences = project.query("SELECT schemaname, sequencename, last_value FROM pg_sequences "
                              "ORDER BY 1, 2")
    return {"columns": columns, "indexes": indexes, "constraints": constraints, "rows": rows,
            "sequences": sequences}


def start(project, *args, **env):
    return subprocess.Popen(
        [str(a) for a in project.db_argv(*args)], cwd=project.path,
        env={**project.env, "FLASK_APP": "migrate_example.py", **env},
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_concurrent_index_in_an_autocommit_block_is_applied(at_head):
    project = at_head
    project.add_revision("conc0001", CONCURRENT_INDEX)

    code, output = project.db("upgrade")

    assert code == 0, output
    assert index_valid(project, "ix_employee_age") is True
    assert project.version() == "conc0001"
    assert project.query("SELECT count(*) FROM migration_checksums "
                         "WHERE revision = 'conc0001'") == [(1,)]
    # The session's timeouts are set back: no run leaves them on its connection's session.
    assert project.query("SELECT count(*) FROM employee") == [(100,)]


def test_a_concurrent_index_waits_for_a_lock_holder_and_is_retried(at_head):
    project = at_head
    project.add_revision("conc0001", CONCURRENT_INDEX)
    engine = project.engine()
    holder = engine.connect()
    transaction = holder.begin()
    holder.execute(sa.text("LOCK TABLE employee IN SHARE ROW EXCLUSIVE MODE"))
    try:
        run = start(project, "upgrade", MIGRATE_PG_LOCK_TIMEOUT="1")
        watchdog = threading.Timer(60, run.kill)  # a run that waits for ever ends the test
        watchdog.start()
        lines = []
        while not any("retrying" in line for line in lines):
            lines.append(run.stdout.readline())
            assert lines[-1], "".join(lines)
        transaction.rollback()  # the holder ends: the retried statement gets its lock
        output = "".join(lines) + run.communicate(timeout=120)[0]
        watchdog.cancel()
    finally:
        holder.close()
        engine.dispose()

    assert run.returncode == 0, output
    assert "conc0001_test.py: a statement outside the transaction waited 1 s for a lock" \
           in output, output
    assert index_valid(project, "ix_employee_age") is True
    assert project.version() == "conc0001"


def test_an_invalid_index_left_over_is_dropped_and_built_again(at_head):
    project = at_head
    engine = project.engine()
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn, \
                pytest.raises(sa.exc.IntegrityError):  # duplicate ages
            conn.execute(sa.text(
                "CREATE UNIQUE INDEX CONCURRENTLY ix_employee_age ON employee (age)"))
    finally:
        engine.dispose()
    assert index_valid(project, "ix_employee_age") is False
    project.add_revision("conc0001", CONCURRENT_INDEX)

    code, output = project.db("upgrade")

    assert code == 0, output
    assert "dropped the INVALID index public.ix_employee_age" in output, output
    assert index_valid(project, "ix_employee_age") is True
    assert project.query("SELECT indisunique FROM pg_index WHERE indexrelid = "
                         "'ix_employee_age'::regclass") == [(False,)]
    assert project.version() == "conc0001"


def test_a_failure_after_leaving_the_transaction_says_what_committed(at_head):
    project = at_head
    head = project.version()
    project.add_revision("fail0001", COLUMN_THEN_FAILING_INDEX)

    code, output = project.db("upgrade")

    assert code == 1, output
    last = output.splitlines()[-1]
    assert last.startswith("Error: fail0001_test.py failed (could not create unique index "
                           "\"uq_employee_age\" "), output
    assert ("after 1 of its statements had committed, and they stay: "
            "1) ALTER TABLE employee ADD COLUMN nickname VARCHAR. ") in last, output
    assert "rolled back" not in last.split("The rest")[0], output
    # What it says is what happened: the column stays, the version is not recorded.
    assert "nickname" in project.columns("employee")
    assert project.version() == head
    assert project.query("SELECT count(*) FROM migration_checksums "
                         "WHERE revision = 'fail0001'") == [(0,)]


def test_ctrl_c_outside_the_transaction_says_what_committed(at_head):
    """Never "rolled back" for work that committed: Ctrl-C while a statement of the
    autocommit block waits names the statement that stays."""
    project = at_head
    head = project.version()
    project.add_revision("wait0001", COLUMN_THEN_WAITING)
    holder = project.engine().connect()
    holder.execute(sa.text("SELECT pg_advisory_lock(4242)"))
    try:
        run = start(project, "upgrade", MIGRATE_PG_LOCK_TIMEOUT="600")
        waiting = ("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                   "AND query = 'SELECT pg_advisory_lock(4242)'")
        while project.query(waiting) != [(1,)]:  # the catalog says when it waits
            assert run.poll() is None, run.communicate()[0]
        run.send_signal(signal.SIGINT)
        output, _ = run.communicate(timeout=60)
    finally:
        holder.close()

    assert run.returncode == 130, output
    assert output.splitlines()[-1] == (
        "Error: interrupted during the upgrade of wait0001: 1 of its statements had committed, "
        "and they stay: 1) ALTER TABLE employee ADD COLUMN nickname VARCHAR; the rest of it was "
        "rolled back and its version is not recorded; no revision of this run had been applied "
        "before it")
    assert "nickname" in project.columns("employee")
    assert project.version() == head


def test_a_rehearsal_refuses_a_revision_that_commits(at_head):
    project = at_head
    project.add_revision("comm0001", COMMITS_IN_THE_MIDDLE)
    before = fingerprint(project)

    code, output = project.db("upgrade", "--rehearse")

    assert code == 1, output
    assert output.splitlines()[-1] == (
        "Error: comm0001_test.py: it commits its transaction (a COMMIT statement), which the "
        "one transaction of a rehearsal cannot hold; not rehearsed, rolled back, the database "
        "was not changed"), output
    assert fingerprint(project) == before


def test_a_rehearsal_refuses_a_statement_no_transaction_can_hold(at_head):
    project = at_head
    project.add_revision("vacu0001", VACUUMS)
    before = fingerprint(project)

    code, output = project.db("upgrade", "--rehearse")

    assert code == 1, output
    assert output.splitlines()[-1] == (
        "Error: vacu0001_test.py: it runs a statement that cannot run inside a transaction (in "
        "its autocommit_block), which the one transaction of a rehearsal cannot hold; not "
        "rehearsed, rolled back, the database was not changed"), output
    assert fingerprint(project) == before


def test_a_rehearsal_builds_a_concurrent_index_in_its_transaction(at_head):
    project = at_head
    project.add_revision("conc0001", CONCURRENT_INDEX)
    before = fingerprint(project)

    code, output = project.db("upgrade", "--rehearse")

    assert code == 0, output
    assert "conc0001_test.py: its autocommit_block runs in the rehearsal's transaction" in output
    assert fingerprint(project) == before


def test_a_rehearsal_sets_back_the_sequences_it_advanced(at_head):
    project = at_head
    project.add_revision("rows0001", INSERTS_ROWS)
    before = fingerprint(project)

    code, output = project.db("upgrade", "--rehearse")

    assert code == 0, output
    assert "rows: company 100 -> 100, employee 100 -> 102" in output, output
    assert "Sequences the rehearsal advanced, set back: public.employee_id_seq" in output
    assert output.splitlines()[-1] == "Rehearsal done: rolled back, the database was not changed"
    assert fingerprint(project) == before
    # And the next real insert takes the number after the rows that exist.
    assert project.db("upgrade")[0] == 0
    assert project.query("SELECT id FROM employee WHERE name LIKE 'new %' ORDER BY id") == [
        (101,), (102,)]


def test_a_commit_statement_in_an_upgrade_stops_it_and_says_what_committed(at_head):
    project = at_head
    head = project.version()
    project.add_revision("comm0001", COMMITS_IN_THE_MIDDLE)

    code, output = project.db("upgrade")

    assert code == 1, output
    assert output.splitlines()[-1] == (
        "Error: comm0001_test.py failed (a statement ended its transaction; the revision "
        "stopped there, use autocommit_block() for work outside a transaction) after 3 of its "
        "statements had committed, and they stay: 1) ALTER TABLE "
        "employee ADD COLUMN nickname VARCHAR; 2) UPDATE employee SET age = age + 100; "
        "3) COMMIT. The rest of the revision was rolled back and its version is not recorded: "
        "make its statements safe to run again (IF NOT EXISTS) and run the upgrade again"), output
    assert "nickname" in project.columns("employee")
    assert "side" not in project.tables()
    assert project.version() == head


def test_a_statement_outside_the_transaction_that_never_gets_its_lock_fails_once(at_head):
    project = at_head
    head = project.version()
    project.add_revision("conc0001", CONCURRENT_INDEX)
    engine = project.engine()
    holder = engine.connect()
    transaction = holder.begin()
    holder.execute(sa.text("LOCK TABLE employee IN SHARE ROW EXCLUSIVE MODE"))
    try:
        code, output = project.db("upgrade", env={"MIGRATE_PG_LOCK_TIMEOUT": "0.5",
                                                  "MIGRATE_PG_LOCK_RETRIES": "1"})
    finally:
        transaction.rollback()
        holder.close()
        engine.dispose()

    assert code == 1, output
    # Retried per statement, and not once more as a whole revision.
    assert output.count("retrying") == 1, output
    assert output.splitlines()[-1] == (
        "Error: conc0001_test.py failed (canceling statement due to lock timeout) outside its "
        "transaction, before any of its statements had committed; its version is not "
        "recorded"), output
    assert index_valid(project, "ix_employee_age") is None
    assert project.version() == head
