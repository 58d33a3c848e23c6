"""PostgreSQL: a revision waiting for a table's lock gives up after MIGRATE_PG_LOCK_TIMEOUT,
rolls back, and tries again, so readers queued behind it never wait longer than that."""
import subprocess
import threading
import time

import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.postgresql

ADD_NICKNAME = """
    def upgrade():
        op.add_column("employee", sa.Column("nickname", sa.String))


    def downgrade():
        op.drop_column("employee", "nickname")
"""


@pytest.fixture
def backend():
    return "postgresql"


@pytest.fixture
def blocked(project):
    """The project at head plus one pending ALTER TABLE, and a session in a transaction that
    has read the table (so it holds a lock the ALTER TABLE must wait for)."""
    assert project.db("upgrade")[0] == 0
    project.populate(rows=100)
    project.add_revision("nick0001", ADD_NICKNAME)
    engine = project.engine()
    holder = engine.connect()
    transaction = holder.begin()  # before any statement: SQLAlchemy 2 would autobegin one
    pid = holder.execute(sa.text("SELECT pg_backend_pid()")).scalar()
    holder.execute(sa.text("SELECT count(*) FROM employee")).scalar()
    yield project, transaction, pid
    holder.close()
    engine.dispose()


def start(project, *args, **env):
    return subprocess.Popen(
        [str(a) for a in project.db_argv(*args)], cwd=project.path,
        env={**project.env, "FLASK_APP": "migrate_example.py", **env},
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


class Reader(threading.Thread):
    """Another client: reads the table over and over, and keeps its longest wait."""

    def __init__(self, project):
        super().__init__(daemon=True)
        self.engine = project.engine()
        self.done = threading.Event()
        self.longest = 0.0

    def run(self):
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            while not self.done.is_set():
                start = time.monotonic()
                conn.execute(sa.text("SELECT count(*) FROM employee")).scalar()
                self.longest = max(self.longest, time.monotonic() - start)

    def stop(self):
        self.done.set()
        self.join(timeout=30)
        self.engine.dispose()
        return self.longest


def test_a_blocked_revision_retries_and_readers_never_queue_behind_it(blocked):
    project, transaction, pid = blocked
    reader = Reader(project)
    reader.start()
    run = start(project, "upgrade", MIGRATE_PG_LOCK_TIMEOUT="1")
    watchdog = threading.Timer(60, run.kill)  # a run that waits for ever ends the test
    watchdog.start()

    lines = []
    while not any("retrying" in line for line in lines):
        lines.append(run.stdout.readline())
        assert lines[-1], "".join(lines)
    transaction.rollback()  # the blocking session ends its transaction
    output = "".join(lines) + run.communicate(timeout=120)[0]
    watchdog.cancel()
    longest = reader.stop()

    assert run.returncode == 0, output
    assert f"waited 1 s for a lock held by pid {pid} (idle in transaction: SELECT count(*) " \
           "FROM employee)" in output, output
    assert "nickname" in project.columns("employee")
    assert project.query("SELECT count(*) FROM employee") == [(100,)]
    # Queued behind the ALTER TABLE's lock request for at most its 1 s lock timeout.
    assert longest < 2.0, longest
    print(f"longest wait of another session's SELECT: {longest:.3f} s")


def test_a_revision_that_never_gets_its_lock_fails_cleanly(blocked):
    project, transaction, pid = blocked
    before = project.state()

    code, output = project.db("upgrade", env={"MIGRATE_PG_LOCK_TIMEOUT": "0.5",
                                              "MIGRATE_PG_LOCK_RETRIES": "2"})

    assert code == 1
    assert output.count("retrying") == 2, output
    assert output.splitlines()[-1] == (
        "Error: nick0001_test.py: could not lock a table within 0.5 s (MIGRATE_PG_LOCK_TIMEOUT), "
        f"3 times; held by pid {pid} (idle in transaction: SELECT count(*) FROM employee); that "
        "revision was rolled back"), output
    transaction.rollback()
    assert project.state() == before
