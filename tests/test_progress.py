"""Progress on long work: each revision's line as it starts and its time as it ends; on a
terminal, a line of the elapsed time and a SQLite copy's rows, updated in place and cleared;
nothing of that in piped output. And the snapshot's size before it, its time after."""
import os
import re
import select
import subprocess
import time

import pytest
from conftest import CLIS

HEAD = "edee0e2ae9aa"
ROWS = 300_000
# The revision waits for the test when GATE names a fifo: the test lets it go on once it has
# seen the revision's start line, so that line must come before the revision's work.
SLOW = '''
import os


def upgrade():
    if os.environ.get("GATE"):
        with open(os.environ["GATE"]) as gate:
            gate.read()
    with op.batch_alter_table("employee") as batch:
        batch.alter_column("age", existing_type=sa.Integer, nullable=False)


def downgrade():
    pass
'''
START = f"Running upgrade {HEAD} -> slow0001 ..."


@pytest.fixture(params=CLIS)
def cli(request):
    return request.param


@pytest.fixture
def slow(sqlite_project):
    """A project at head with ROWS employees, and a revision that copies their table."""
    project = sqlite_project
    assert project.db("upgrade")[0] == 0
    project.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :rows) "
        "INSERT INTO employee (id, name, age) SELECT i, 'employee ' || i, i % 50 FROM n",
        {"rows": ROWS})
    project.add_revision("slow0001", SLOW)
    return project


def read_until(controller, seen, wanted, timeout=120):
    """Read the terminal until `wanted` (a regex) shows; fail if the command ends first, or
    `timeout` seconds pass (a deadline, however much else the terminal shows meanwhile)."""
    deadline = time.monotonic() + timeout
    while not re.search(wanted, seen):
        left = deadline - time.monotonic()
        ready, _, _ = select.select([controller], [], [], max(left, 0))
        assert ready and left > 0, f"no {wanted!r} within {timeout} s; so far: {seen!r}"
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the command ended
            chunk = b""
        assert chunk, f"ended before {wanted!r}: {seen!r}"
        seen += chunk.decode()
    return seen


def test_on_a_terminal_the_start_line_comes_first_then_the_copys_rows(slow, tmp_path):
    import pty

    gate = tmp_path / "gate"
    os.mkfifo(gate)
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [str(a) for a in slow.db_argv("upgrade", "-x", "backup=off")], cwd=slow.path,
        env={**slow.env, "FLASK_APP": "migrate_example.py", "GATE": str(gate),
             "MIGRATE_PROGRESS_AFTER": "0.01"},
        stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    seen = ""
    try:
        seen = read_until(controller, seen, re.escape(START), 60)  # the revision waits for us
        with open(gate, "w") as opened:
            opened.write("go")
        seen = read_until(controller, seen, r"copying employee: [\d,]+ rows")
        seen = read_until(controller, seen, r"  done in \d+\.\d\d s\r?\n")
    finally:
        os.close(controller)
        if "done in" not in seen:
            proc.kill()  # a failed test leaves no command waiting on the gate
    assert proc.wait(timeout=60) == 0, seen

    assert re.search(r"\r  \.\.\. \d+\.\d s elapsed\x1b\[K", seen), seen
    counts = [int(n.replace(",", ""))
              for n in re.findall(r"copying employee: ([\d,]+) rows", seen)]
    assert counts == sorted(counts) and 0 < counts[-1] <= ROWS, counts
    # Cleared before the next line: the done line starts a clean line.
    assert re.search(r"\r\x1b\[KINFO  \[alembic.runtime.migration\]   done in", seen), seen
    assert slow.query("SELECT count(*), sum(age) FROM employee") == [
        (ROWS, sum(i % 50 for i in range(1, ROWS + 1)))]


def test_piped_output_has_no_progress_line(slow):
    code, output = slow.db("upgrade", "-x", "backup=off",
                           env={"MIGRATE_PROGRESS_AFTER": "0.01"})

    assert code == 0, output
    lines = output.splitlines()
    assert len(lines) == 2, output
    assert lines[0] == f"INFO  [alembic.runtime.migration] {START}"
    assert re.fullmatch(r"INFO  \[alembic.runtime.migration\]   done in \d+\.\d\d s", lines[1])
    assert slow.query("SELECT count(*) FROM employee") == [(ROWS,)]


def test_the_snapshot_says_its_size_before_and_its_time_after(sqlite_project):
    assert sqlite_project.db("upgrade")[0] == 0
    size = (sqlite_project.path / "data.db").stat().st_size

    code, output = sqlite_project.db("downgrade")

    assert code == 0, output
    lines = [line for line in output.splitlines() if line.startswith("Snapshot")]
    assert lines[0] == f"Snapshotting data.db ({size / 1000:.0f} kB)..."
    assert re.fullmatch(r"Snapshot of data\.db \(\d+\.\d\d s\) saved to \S+", lines[1]), lines
    assert len(lines) == 2, lines


def test_human_size():
    from safe_migrate.progress import human_size

    assert [human_size(n) for n in (512, 57_344, 97_000_000, 3_200_000_000)] == [
        "512 bytes", "57 kB", "97 MB", "3 GB"]
