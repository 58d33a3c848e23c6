"""Plain `CREATE INDEX` against `CREATE INDEX CONCURRENTLY` on a 1,000,000-row PostgreSQL
table: each build's time, and how long another session's single-row INSERTs wait meanwhile
(a second connection inserts in a loop; the longest INSERT that overlapped the build).

    python bench/concurrent_index.py [ROUNDS]

Run it with the project's virtualenv active, as root or a user that can run initdb. It starts
a throwaway cluster on 127.0.0.1, as the tests do (bench/rehearse_postgresql.py), and removes
it at the end. The two builds alternate (plain, concurrent, plain, ...), ROUNDS pairs (3 by
default); each figure is the median of its rounds, each ratio the median of per-pair ratios.
"""
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import PG_PASSWORD, PostgresServer, find_pg_bin

ROWS = 1_000_000
BUILDS = {
    "plain": "CREATE INDEX ix_employee_email ON employee (email)",
    "concurrent": "CREATE INDEX CONCURRENTLY ix_employee_email ON employee (email)",
}


def connect(server, dbname="bench"):
    conn = psycopg2.connect(host="127.0.0.1", port=server.port, user="postgres",
                            password=PG_PASSWORD, dbname=dbname)
    conn.autocommit = True  # CONCURRENTLY refuses a transaction block; each INSERT commits
    return conn


class Writer(threading.Thread):
    """Another session: INSERT one row, commit, again, recording each one's start and end."""

    def __init__(self, server):
        super().__init__(daemon=True)
        self.conn = connect(server)
        self.stop = threading.Event()
        self.warm = threading.Event()  # set once 200 INSERTs ran: the baseline is measured
        self.times = []  # (start, end), perf_counter seconds

    def run(self):
        with self.conn.cursor() as cur:
            while not self.stop.is_set():
                start = time.perf_counter()
                cur.execute("INSERT INTO employee (name, email) VALUES ('writer', "
                            "'writer@example.com')")
                self.times.append((start, time.perf_counter()))
                if len(self.times) == 200:
                    self.warm.set()
        self.conn.close()


def one_build(server, kind):
    """Build the index once while the writer inserts; drop it again. Returns the build's
    seconds, the longest INSERT overlapping it, the writer's median INSERT before it, and how
    many INSERTs completed during it."""
    writer = Writer(server)
    writer.start()
    writer.warm.wait()
    conn = connect(server)
    with conn.cursor() as cur:
        start = time.perf_counter()
        cur.execute(BUILDS[kind])
        end = time.perf_counter()
    writer.stop.set()
    writer.join()
    before = [e - s for s, e in writer.times if e < start]
    during = [e - s for s, e in writer.times if s < end and e > start]
    with conn.cursor() as cur:
        cur.execute("DROP INDEX ix_employee_email")
        cur.execute("VACUUM ANALYZE employee")
    conn.close()
    return {"build": end - start, "max_insert": max(during), "baseline": statistics.median(before),
            "inserts_during": len(during)}


def main(rounds=3):
    server = PostgresServer(find_pg_bin(), Path(tempfile.mkdtemp(prefix="bench-pg-")))
    server.start()
    try:
        server.admin("CREATE DATABASE bench")
        conn = connect(server)
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE employee (id serial PRIMARY KEY, name text NOT NULL, "
                        "email text NOT NULL)")
            cur.execute("INSERT INTO employee (name, email) SELECT 'employee ' || i, "
                        "md5(i::text) || '@example.com' FROM generate_series(1, %s) i", (ROWS,))
            cur.execute("VACUUM ANALYZE employee")
            cur.execute("SHOW server_version")
            version = cur.fetchone()[0]
        conn.close()
        results = {kind: [] for kind in BUILDS}
        for _ in range(rounds):
            for kind in BUILDS:
                results[kind].append(one_build(server, kind))
        report(results, rounds, version)
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


def report(results, rounds, version):
    def median(kind, key):
        return statistics.median(r[key] for r in results[kind])

    def ratio(key):
        return statistics.median(c[key] / p[key]
                                 for p, c in zip(results["plain"], results["concurrent"]))

    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"Produced on {now}, {platform.machine()}, PostgreSQL {version}, "
          f"Python {platform.python_version()}; {ROWS:,} rows, index on a text column, "
          f"median of {rounds} alternating rounds.\n")
    print("| build | build time | longest INSERT during it | INSERTs done during it "
          "| median INSERT before |")
    print("|---|---:|---:|---:|---:|")
    for kind, statement in BUILDS.items():
        print(f"| `{statement.split(' ix_')[0]}` | {median(kind, 'build'):.2f} s "
              f"| {median(kind, 'max_insert') * 1000:.1f} ms "
              f"| {median(kind, 'inserts_during'):.0f} "
              f"| {median(kind, 'baseline') * 1000:.2f} ms |")
    print(f"\nRatios concurrent/plain: build time {ratio('build'):.2f}, longest INSERT "
          f"{ratio('max_insert'):.4f}.")
    for kind in BUILDS:
        print(f"{kind}: " + "; ".join(
            f"build {r['build']:.2f} s, longest INSERT {r['max_insert'] * 1000:.1f} ms, "
            f"{r['inserts_during']} INSERTs" for r in results[kind]))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
