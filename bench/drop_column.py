"""Benchmark, side by side in one run: dropping an unindexed column of a 1,000,000-row SQLite
table three ways, each in a child process on a fresh copy of the same database file:

* copy   - Alembic's batch copy, as every drop_column ran before (recreate="always")
* native - our path: batch_alter_table() with sqlite_copies installed, which runs SQLite's
           own ALTER TABLE DROP COLUMN (no copy)
* raw    - sqlite3 alone: ALTER TABLE t DROP COLUMN legacy

Reports the median time of the operation (its transaction included) and the child's peak RSS.

    python bench/drop_column.py              # 1,000,000 rows, 3 runs each
    python bench/drop_column.py --rows 100000 --runs 1
"""
import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import sys, time
sys.path.insert(0, {root!r})
variant, path = sys.argv[1], sys.argv[2]
if variant == "raw":
    import sqlite3
    conn = sqlite3.connect(path, isolation_level=None)
    start = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("ALTER TABLE t DROP COLUMN legacy")
    conn.execute("COMMIT")
else:
    import sqlalchemy as sa
    from alembic.migration import MigrationContext
    from alembic.operations import Operations
    from pathlib import Path
    from safe_migrate import sqlite_copies
    from safe_migrate.connections import migration_engine
    from safe_migrate.locks import WaitBudget
    from safe_migrate.settings import Settings
    # A migration run's engine, as the runner makes it.
    engine = migration_engine(sa.engine.make_url("sqlite:///" + path), Path(path), Settings(),
                              {{}}, budget=WaitBudget(60))
    with engine.connect() as connection:
        start = time.perf_counter()
        with connection.begin():
            context = MigrationContext.configure(connection)
            if variant == "native":
                sqlite_copies.install(context)
            recreate = "always" if variant == "copy" else "auto"
            with Operations(context).batch_alter_table("t", recreate=recreate) as batch_op:
                batch_op.drop_column("legacy")
            assert not sqlite_copies.losses(context)
print(time.perf_counter() - start)
"""


def make_database(path: Path, rows: int) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                     "email TEXT, legacy TEXT)")
        conn.execute("CREATE INDEX ix_t_email ON t (email)")
        conn.execute(
            "INSERT INTO t (name, email, legacy) WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL "
            "SELECT i + 1 FROM n WHERE i < ?) SELECT 'name ' || i, 'e' || i || '@example.com', "
            "'legacy value ' || i FROM n", (rows,))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        database = scratch / "base.db"
        make_database(database, args.rows)
        size = database.stat().st_size / 2**20
        print(f"SQLite {sqlite3.sqlite_version}, {args.rows:,} rows, {size:.0f} MB, "
              f"median of {args.runs} run(s)\n")
        print("| path | seconds | peak RSS (MB) |\n|---|---:|---:|")
        for variant in ("copy", "native", "raw"):
            seconds, peaks = [], []
            for _ in range(args.runs):
                took, peak = measure(variant, database, scratch)
                seconds.append(took)
                peaks.append(peak)
            print(f"| {variant} | {statistics.median(seconds):.2f} | "
                  f"{statistics.median(peaks):.0f} |")


def measure(variant: str, database: Path, scratch: Path) -> tuple[float, float]:
    """run() with the child's peak RSS from the kernel's rusage of it."""
    copy = scratch / f"{variant}.db"
    shutil.copyfile(database, copy)
    proc = subprocess.Popen([sys.executable, "-c", CHILD.format(root=str(ROOT)), variant, copy],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{variant} failed: {err.strip().splitlines()[-1]}")
    with sqlite3.connect(copy) as conn:
        columns = [row[1] for row in conn.execute("SELECT * FROM pragma_table_info('t')")]
    assert columns == ["id", "name", "email"], columns
    copy.unlink()
    return float(out.strip().splitlines()[-1]), usage.ru_maxrss / 1024


if __name__ == "__main__":
    main()
