"""Benchmarks, side by side in one run: our CLI against Flask-Migrate 4's `flask db` and
against raw SQLite. Writes a markdown report to bench/RESULTS.md and prints it.

    python bench/run.py              # the full run (1,000,000 rows; about 10 minutes)
    python bench/run.py --quick      # a smoke run: fewer rows and repetitions

Run it with the project's virtualenv active. The Flask-Migrate 4 anchor gets a virtualenv of
its own (bench/.venv-fm4, from bench/fm4-requirements.txt), made on first use.
"""
import argparse
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
FM4_VENV = BENCH / ".venv-fm4"
OURS = [sys.executable, "migrate_example.py"]
# As users run it: Python caches bytecode (some sandboxes switch that off).
BASE_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

REVISION = """\
import sqlalchemy as sa
from alembic import op

revision = {rev!r}
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade():
{upgrade}


def downgrade():
{downgrade}
"""


# --- measuring --------------------------------------------------------------------------


def measure(argv, cwd, env):
    """Run a command; return (seconds, peak RSS in MB). Fails loudly if the command does."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(map(str, argv))}\n{output.decode()}")
    return seconds, usage.ru_maxrss / 1024


def alternate(first, second, runs):
    """Run two commands A B A B ...; medians of each and the median of the A/B ratios."""
    a_times, b_times = [], []
    for _ in range(runs):
        a_times.append(first())
        b_times.append(second())
    ratios = [a / b for a, b in zip(a_times, b_times)]
    return statistics.median(a_times), statistics.median(b_times), statistics.median(ratios)


def seconds_of(argv, cwd, env):
    return lambda: measure(argv, cwd, env)[0]


def on_a_fresh_database(database, argv, cwd, env):
    """seconds_of, with the database file removed before each run (outside the timing)."""
    def run():
        database.unlink(missing_ok=True)
        return measure(argv, cwd, env)[0]
    return run


# --- the two projects -------------------------------------------------------------------


def fm4_python():
    python = FM4_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", FM4_VENV], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", "-r",
                        BENCH / "fm4-requirements.txt"], check=True)
    return python


def generated_revision(index, down):
    rev = f"bench{index:05d}"
    table = f"bench_{index:05d}"
    return rev, REVISION.format(
        rev=rev, down=down,
        upgrade=f"    op.create_table({table!r}, sa.Column('id', sa.Integer, primary_key=True))",
        downgrade=f"    op.drop_table({table!r})")


def add_generated_revisions(versions, count):
    down = "edee0e2ae9aa"  # the committed head
    for index in range(count):
        down, text = generated_revision(index, down)
        (versions / f"{down}_generated.py").write_text(text)


def make_ours(workdir, extra_revisions):
    project = workdir / "ours"
    project.mkdir()
    shutil.copy(ROOT / "migrate_example.py", project)
    for folder in ("migrations", "safe_migrate"):
        shutil.copytree(ROOT / folder, project / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    add_generated_revisions(project / "migrations" / "versions", extra_revisions)
    env = {**BASE_ENV, "DATABASE_URL": f"sqlite:///{project / 'data.db'}"}
    return project, env


def make_tutorial(workdir, ours):
    """The tutorial's module with Flask-Migrate's stock env.py, on a copy of our database
    and revisions."""
    import flask_migrate

    project = workdir / "tutorial"
    shutil.copytree(ours / "migrations", project / "migrations",
                    ignore=shutil.ignore_patterns("__pycache__"))
    stock = Path(flask_migrate.__file__).parent / "templates" / "flask" / "env.py"
    shutil.copy(stock, project / "migrations" / "env.py")
    shutil.copy(ours / "data.db", project)
    shutil.copy(BENCH / "tutorial_app.py", project)
    return project


def make_fm4(workdir, extra_revisions, python):
    project = workdir / "fm4"
    project.mkdir()
    env = {**BASE_ENV, "FLASK_APP": str(BENCH / "fm4_app.py"),
           "DATABASE_URL": f"sqlite:///{project / 'data.db'}",
           "MIGRATIONS_DIR": str(project / "migrations")}
    measure([python, "-m", "flask", "db", "init"], project, env)
    versions = project / "migrations" / "versions"
    for script in (ROOT / "migrations" / "versions").glob("*.py"):
        shutil.copy(script, versions)
    add_generated_revisions(versions, extra_revisions)
    return project, env


# --- the benchmarks ---------------------------------------------------------------------


def cli_latency(fm4, revisions, runs, report):
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        ours, ours_env = make_ours(workdir, revisions - 3)
        theirs, fm4_env = make_fm4(workdir, revisions - 3, fm4)
        # Each pair from an empty database; the last leaves both at head for the rows below.
        upgrade_times = alternate(
            on_a_fresh_database(ours / "data.db", OURS + ["db", "upgrade"], ours, ours_env),
            on_a_fresh_database(theirs / "data.db", [fm4, "-m", "flask", "db", "upgrade"],
                                theirs, fm4_env), runs)
        report.row("upgrade base → head", revisions, *upgrade_times)
        medians = {}
        # check at 3 revisions only: the generated revisions' tables are not in the models.
        for command in ("current", "heads", "upgrade", "check")[:None if revisions == 3 else 3]:
            result = alternate(seconds_of(OURS + ["db", command], ours, ours_env),
                               seconds_of([fm4, "-m", "flask", "db", command], theirs, fm4_env),
                               runs)
            medians[command] = result[0]
            label = "upgrade (nothing to do)" if command == "upgrade" else command
            report.row(label, revisions, *result)
        # A real upgrade goes through Alembic; a no-op `db upgrade <head id>` does too, and is
        # the start-up that the big-table rows below subtract.
        medians["startup"] = statistics.median(
            seconds_of(OURS + ["db", "upgrade", "edee0e2ae9aa" if revisions == 3 else
                               f"bench{revisions - 4:05d}"], ours, ours_env)()
            for _ in range(runs))
        # The same app through Flask's CLI: `flask db upgrade` with nothing to do.
        ours_flask = [sys.executable, "-m", "flask", "db", "upgrade"]
        report.row("`flask db upgrade` (nothing to do)", revisions,
                   *alternate(seconds_of(ours_flask, ours, {**ours_env,
                                                            "FLASK_APP": "migrate_example.py"}),
                              seconds_of([fm4, "-m", "flask", "db", "upgrade"], theirs, fm4_env),
                              runs))
        # The floor without Alembic: what `db current` cannot do without (imports and a read).
        floor_stack = [sys.executable, "-c", (
            "import flask, flask_script, flask_sqlalchemy, sqlite3; sqlite3.connect('data.db')"
            ".execute('SELECT version_num FROM alembic_version').fetchall()")]
        report.row("current vs imports without Alembic + read", revisions,
                   *alternate(seconds_of(OURS + ["db", "current"], ours, ours_env),
                              seconds_of(floor_stack, ours, ours_env), runs),
                   anchor="imports + read")
        stack = [sys.executable, "-c",
                 "import flask_sqlalchemy, flask_migrate, flask_script, alembic.command"]
        report.row("current vs bare import of our stack", revisions,
                   *alternate(seconds_of(OURS + ["db", "current"], ours, ours_env),
                              seconds_of(stack, ours, ours_env), runs),
                   anchor="bare import")
        tutorial = make_tutorial(workdir, ours)
        tutorial_current = [sys.executable, "tutorial_app.py", "db", "current"]
        report.row("current vs the tutorial's own module", revisions,
                   *alternate(seconds_of(OURS + ["db", "current"], ours, ours_env),
                              seconds_of(tutorial_current, tutorial, BASE_ENV), runs),
                   anchor="tutorial module")
        report.row("the tutorial's own module's current vs bare import", revisions,
                   *alternate(seconds_of(tutorial_current, tutorial, BASE_ENV),
                              seconds_of(stack, ours, ours_env), runs),
                   anchor="bare import")
        floor = [sys.executable, "-c", ("import sqlite3; sqlite3.connect('data.db').execute("
                 "'SELECT version_num FROM alembic_version').fetchall()")]
        report.row("current vs raw sqlite3 read of alembic_version", revisions,
                   *alternate(seconds_of(OURS + ["db", "current"], ours, ours_env),
                              seconds_of(floor, ours, ours_env), runs),
                   anchor="sqlite3 floor")
        return medians


RAW_STATEMENTS = {
    "add column": ["ALTER TABLE employee ADD COLUMN nickname VARCHAR"],
    "rename column": ["ALTER TABLE employee RENAME COLUMN age TO years"],
    # SQLite's documented rebuild: create, copy, drop, rename.
    "drop column": [
        ("CREATE TABLE employee_new (id INTEGER NOT NULL, name VARCHAR NOT NULL, "
         "CONSTRAINT pk_employee PRIMARY KEY (id), CONSTRAINT uq_employee_name UNIQUE (name))"),
        "INSERT INTO employee_new (id, name) SELECT id, name FROM employee",
        "DROP TABLE employee",
        "ALTER TABLE employee_new RENAME TO employee",
    ],
}

# The revisions `db migrate` writes for the same changes (the rename with -x rename=...).
REVISION_BODIES = {
    "add column": (("    with op.batch_alter_table('employee', schema=None) as batch_op:\n"
                   "        batch_op.add_column(sa.Column('nickname', sa.String(), nullable=True))"),
                   ("    with op.batch_alter_table('employee', schema=None) as batch_op:\n"
                   "        batch_op.drop_column('nickname')")),
    "rename column": (("    op.alter_column('employee', 'age', existing_type=sa.INTEGER(),\n"
                      "                    new_column_name='years', existing_nullable=True)"),
                      ("    op.alter_column('employee', 'years', existing_type=sa.INTEGER(),\n"
                      "                    new_column_name='age', existing_nullable=True)")),
    "drop column": (("    with op.batch_alter_table('employee', schema=None) as batch_op:\n"
                    "        batch_op.drop_column('age')"),
                    ("    with op.batch_alter_table('employee', schema=None) as batch_op:\n"
                    "        batch_op.add_column(sa.Column('age', sa.INTEGER(), nullable=True))")),
}

EXPECTED_COLUMNS = {"add column": ["id", "name", "age", "nickname"],
                    "rename column": ["id", "name", "years"], "drop column": ["id", "name"]}


def populated_database(workdir, rows):
    project, env = make_ours(workdir, 0)
    measure(OURS + ["db", "upgrade"], project, env)
    with sqlite3.connect(project / "data.db") as conn:
        conn.executemany("INSERT INTO employee (id, name, age) VALUES (?, ?, ?)",
                         ((i, f"employee {i}", 20 + i % 45) for i in range(1, rows + 1)))
    return project, env


def check_rows(database, operation, rows):
    with sqlite3.connect(database) as conn:
        columns = [c[1] for c in conn.execute("PRAGMA table_info(employee)")]
        count, names = conn.execute(
            "SELECT count(*), count(DISTINCT name) FROM employee").fetchone()
        sample = conn.execute("SELECT * FROM employee WHERE id = 4242").fetchone()
    assert columns == EXPECTED_COLUMNS[operation], (operation, columns)
    assert (count, names) == (rows, rows), (operation, count, names)
    assert sample[:2] == (4242, "employee 4242"), sample


def big_tables(rows, runs, startup, report):
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        template, env = populated_database(workdir, rows)
        database = template / "data.db"
        pristine = workdir / "pristine.db"
        shutil.copy(database, pristine)
        versions = template / "migrations" / "versions"
        for operation, statements in RAW_STATEMENTS.items():
            upgrade, downgrade = REVISION_BODIES[operation]
            revision = versions / "big00001_op.py"
            revision.write_text(REVISION.format(rev="big00001", down="edee0e2ae9aa",
                                                upgrade=upgrade, downgrade=downgrade))
            raw = [sys.executable, "-c", textwrap.dedent(f"""
                import sqlite3
                conn = sqlite3.connect('data.db', isolation_level=None)
                conn.execute('BEGIN')
                for statement in {statements!r}:
                    conn.execute(statement)
                conn.execute('COMMIT')
            """)]
            ours_runs, raw_runs, rehearsals = [], [], []
            for _ in range(runs):
                shutil.copy(pristine, database)
                rehearsals.append(measure(OURS + ["db", "upgrade", "--rehearse"], template, env))
                assert database.read_bytes() == pristine.read_bytes(), "the rehearsal wrote"
                ours_runs.append(measure(OURS + ["db", "upgrade", "-x", "backup=off"],
                                         template, env))
                check_rows(database, operation, rows)
                shutil.copy(pristine, database)
                raw_runs.append(measure(raw, template, env))
                check_rows(database, operation, rows)
            raw_statement_seconds = [timed_statements(database, pristine, statements)
                                     for _ in range(runs)]
            report.big_row(operation, rows, ours_runs, raw_runs,
                           statistics.median(raw_statement_seconds), startup)
            report.rehearsal_row(operation, rows, rehearsals, ours_runs)
            if operation == "add column":  # once more, with the default snapshot
                shutil.copy(pristine, database)
                report.note_snapshot(rows, measure(OURS + ["db", "upgrade"], template, env),
                                     statistics.median(t for t, _ in ours_runs), database)
                shutil.rmtree(template / "backups")
            revision.unlink()


def timed_statements(database, pristine, statements):
    """The raw statements alone, timed inside one process: no interpreter start-up."""
    shutil.copy(pristine, database)
    conn = sqlite3.connect(database, isolation_level=None)
    start = time.perf_counter()
    conn.execute("BEGIN")
    for statement in statements:
        conn.execute(statement)
    conn.execute("COMMIT")
    seconds = time.perf_counter() - start
    conn.close()
    return seconds


# --- the report -------------------------------------------------------------------------


class Report:
    def __init__(self):
        self.latency = []
        self.big = []
        self.rehearsals = []
        self.notes = []

    def row(self, label, revisions, ours, other, ratio, anchor="FM4 `flask db`"):
        self.latency.append(f"| {label} | {revisions} | {ours * 1000:.0f} ms | {anchor}: "
                            f"{other * 1000:.0f} ms | {ratio:.2f} |")
        print(self.latency[-1], flush=True)

    def big_row(self, operation, rows, ours_runs, raw_runs, raw_statements, startup):
        ours = statistics.median(t for t, _ in ours_runs)
        raw = statistics.median(t for t, _ in raw_runs)
        ours_rss = max(r for _, r in ours_runs)
        raw_rss = max(r for _, r in raw_runs)
        beyond = ours - startup - raw_statements
        ratio = (ours - startup) / raw_statements
        self.big.append(
            f"| {operation} | {rows:,} | {ours:.2f} s | {raw:.2f} s | {raw_statements:.3f} s "
            f"| {beyond:+.3f} s | {ratio:.2f} | {ours_rss:.0f} MB | {raw_rss:.0f} MB |")
        print(self.big[-1], flush=True)

    def rehearsal_row(self, operation, rows, rehearsals, real_runs):
        ratios = [r / o for (r, _), (o, _) in zip(rehearsals, real_runs)]
        rehearsal = statistics.median(t for t, _ in rehearsals)
        real = statistics.median(t for t, _ in real_runs)
        self.rehearsals.append(f"| {operation} | {rows:,} | {rehearsal:.2f} s | {real:.2f} s "
                               f"| {statistics.median(ratios):.2f} |")
        print(self.rehearsals[-1], flush=True)

    def note_snapshot(self, rows, with_snapshot, without, database):
        seconds, rss = with_snapshot
        size = database.stat().st_size / 1e6
        self.notes.append(
            f"- With the default snapshot (SQLite's backup API into `backups/`), the add-column "
            f"upgrade of the {rows:,}-row file ({size:.0f} MB) takes {seconds:.2f} s instead of "
            f"{without:.2f} s, peak RSS {rss:.0f} MB (one run).")

    def markdown(self, command, runs, rows, startup):
        return "\n".join([
            "# Benchmark results",
            "",
            (f"Produced by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"SQLite {sqlite3.sqlite_version}. Each figure is a median; ratios are medians of "
            f"per-pair ratios from alternating runs (A B A B ..., {runs} pairs), measured in "
            "one run on the same machine. Wall time of whole processes, start-up included."),
            "",
            "## CLI latency (SQLite, database at head)",
            "",
            "| command | revisions | ours | anchor | ratio ours/anchor |",
            "| --- | --- | --- | --- | --- |",
            *self.latency,
            "",
            f"## Big table: {rows:,} rows in `employee`, through `db upgrade -x backup=off`",
            "",
            ("'raw statements' is the statements alone, timed inside one Python process; "
            "'raw process' is the same statements in a fresh `python -c` (start-up included). "
            f"'beyond' is ours − start-up ({startup * 1000:.0f} ms, the median no-op "
            "`db upgrade edee0e2ae9aa`, which goes through Alembic as a real run does; a no-op "
            "`db upgrade` answers without it) − raw statements; 'ratio' is (ours − start-up) / raw "
            "statements. Rows, columns and a sample row are checked after every run."),
            "",
            ("| operation | rows | ours | raw process | raw statements | beyond | ratio "
            "| ours peak RSS | raw peak RSS |"),
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            *self.big,
            "",
            *self.notes,
            "",
            "## Rehearsal: `db upgrade --rehearse` against the real `db upgrade -x backup=off`",
            "",
            ("The same revisions on the same file, alternating (rehearsal, then the real run, on a "
            "fresh copy of the file each time); the rehearsal copies the file with SQLite's "
            "backup API into a temporary folder and runs there, and the file is checked "
            "byte-identical after it. 'ratio' is the median of per-pair ratios."),
            "",
            "| operation | rows | rehearsal | real run | ratio rehearsal/real |",
            "| --- | --- | --- | --- | --- |",
            *self.rehearsals,
            "",
        ])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rows and repetitions")
    args = parser.parse_args()
    runs, rows, big_runs = (3, 20_000, 1) if args.quick else (15, 1_000_000, 3)
    fm4 = fm4_python()
    report = Report()
    startup = None
    for revisions in (3, 1000):
        medians = cli_latency(fm4, revisions, runs, report)
        startup = startup or medians["startup"]
    big_tables(rows, big_runs, startup, report)
    command = "python bench/run.py" + (" --quick" if args.quick else "")
    text = report.markdown(command, runs, rows, startup)
    if not args.quick:
        (BENCH / "RESULTS.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
