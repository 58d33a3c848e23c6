"""Test sessions. `nox` runs what CI runs (about 27 minutes on 2 cores):

- `tests`: the legacy profile (requirements.txt) on Python 3.13, every test (SQLite,
  PostgreSQL, MariaDB) through both CLIs, with coverage of the package;
- `modern-3.13`: the same tests on the modern profile (requirements-modern.txt);
- `legacy-3.11`, `modern-3.11`: each profile on the oldest Python (a fresh Debian machine's),
  the backend-independent and SQLite tests through the Manager.

Single `db` commands run inside the test process (tests/conftest.py, in_process); tests that
need a real process (signals, kills, ptys, locks, start-up) start one. `nox -s subprocess`
runs every test with every command in a new interpreter, as a user runs it (TEST_SUBPROCESS=1);
it is not in the default run. `nox -s tests-3.12`-style names: `nox -l` lists them all."""
import os
from pathlib import Path

import nox

nox.options.sessions = ["tests", "modern-3.13", "legacy-3.11", "modern-3.11"]
nox.options.error_on_missing_interpreters = True

# This machine's other Pythons are pyenv builds, not on PATH: put them after the default one.
PYENV_VERSIONS = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
os.environ["PATH"] = os.pathsep.join(
    [os.environ["PATH"], *map(str, sorted(PYENV_VERSIONS.glob("3.1[123].*/bin")))])
ROOT = Path(__file__).resolve().parent
# One test process per core (pytest-xdist); each starts its own database servers.
XDIST = ["-n", "auto", "--dist", "worksteal", "--durations=15"]
PROFILES = {"legacy": "requirements.txt", "modern": "requirements-modern.txt"}
# The oldest Python's subset: no database server, the Manager's CLI.
SUBSET = ["-m", "not postgresql and not mariadb"]


def install(session, profile="legacy"):
    session.install("-q", "-r", PROFILES[profile], "-r", "tests/requirements.txt")


@nox.session(python="3.13")
def tests(session):
    """Every test on the legacy profile, with coverage of the package. Coverage runs on
    sys.monitoring (3.12+): commands run in the test process are measured there, from the
    project copies ([tool.coverage.paths] maps them back), subprocesses through its
    subprocess patch."""
    install(session)
    session.env["COVERAGE_FILE"] = str(ROOT / ".coverage")
    session.env["COVERAGE_CORE"] = "sysmon"
    session.run("coverage", "erase")
    session.run("coverage", "run", "-m", "pytest", *XDIST, *session.posargs)
    session.run("coverage", "combine", "-q")
    session.run("coverage", "report")


@nox.session(python="3.13", name="modern-3.13")
def modern_newest(session):
    """Every test on the modern profile (Flask 3, flask-script-ng, Flask-SQLAlchemy 3,
    SQLAlchemy 2, Alembic 1.20), through both CLIs."""
    install(session, "modern")
    session.run("python", "-m", "pytest", *XDIST, *session.posargs)


def oldest(session, profile):
    """The backend-independent and SQLite tests on an older Python, through the Manager."""
    install(session, profile)
    session.env["TEST_CLIS"] = "manager"
    session.run("python", "-m", "pytest", *XDIST, *SUBSET, *session.posargs)


@nox.session(python=["3.11", "3.12"])
def legacy(session):
    """The legacy profile's subset on an older Python (oldest)."""
    oldest(session, "legacy")


@nox.session(python=["3.11", "3.12"])
def modern(session):
    """The modern profile's subset on an older Python (oldest)."""
    oldest(session, "modern")


@nox.session(python="3.13")
def subprocess(session):
    """Every test, every db command in a new interpreter (TEST_SUBPROCESS=1): the suite as a
    user runs the CLIs, when a change to tests/conftest.py's in-process runner is in doubt."""
    install(session)
    session.env["TEST_SUBPROCESS"] = "1"
    session.run("python", "-m", "pytest", *XDIST, *session.posargs)
