"""`db upgrade --rehearse` and `--round-trip` on a 1,000,000-row PostgreSQL table, against
the real `db upgrade`: each run's time and report, and a fingerprint of the database (every
row of employee, every column and constraint, the revision) before and after each rehearsal.

    python bench/rehearse_postgresql.py

Run it with the project's virtualenv active, as root or a user that can run initdb (the
PostgreSQL server binaries, as `.ci/run` installs them). It starts a throwaway cluster on
127.0.0.1, as the tests do, and removes it at the end.
"""
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import PostgresServer, copy_project, find_pg_bin

ROWS = 1_000_000
FINGERPRINT = {
    "rows": "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM employee t",
    "columns": "SELECT string_agg(table_name || '.' || column_name || ' ' || data_type || ' ' "
               "|| is_nullable, ',' ORDER BY table_name, column_name) "
               "FROM information_schema.columns WHERE table_schema = 'public'",
    "constraints": "SELECT string_agg(conname, ',' ORDER BY conname) FROM pg_constraint "
                   "WHERE connamespace = 'public'::regnamespace",
    "revision": "SELECT version_num FROM alembic_version",
}


def main():
    server = PostgresServer(find_pg_bin(), Path(tempfile.mkdtemp(prefix="bench-pg-")))
    server.start()
    try:
        server.admin("CREATE DATABASE bench")
        url = server.url("bench")
        project = copy_project(Path(tempfile.mkdtemp(prefix="bench-project-")) / "project")
        env = {"DATABASE_URL": url, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}

        def db(*args):
            start = time.perf_counter()
            run = subprocess.run([sys.executable, "migrate_example.py", "db", *args],
                                 cwd=project, env=env, capture_output=True, text=True,
                                 check=False)
            return run.returncode, run.stdout + run.stderr, time.perf_counter() - start

        assert db("upgrade", "db251c35ee7a")[0] == 0
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO employee (name, email) SELECT 'employee ' || i, 'e' || i || "
                f"'@example.com' FROM generate_series(1, {ROWS}) i")

        def fingerprint():
            with engine.connect() as conn:
                return {k: conn.exec_driver_sql(q).scalar() for k, q in FINGERPRINT.items()}

        before = fingerprint()
        for args in (["upgrade", "--rehearse"], ["upgrade", "--round-trip"], ["upgrade"]):
            code, output, seconds = db(*args)
            unchanged = fingerprint() == before
            print(f"$ db {' '.join(args)}: exit {code}, {seconds:.2f} s, database "
                  f"{'unchanged' if unchanged else 'changed'}\n{output}")
        engine.dispose()
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
