"""A legacy history (tests/legacy_history/: nine revisions written for bare Flask-Migrate,
hand-written ones among them) run step by step through bare Flask-Migrate (2.7, or 4.1's `flask
db` on the modern profile) and through the tool, side by side on the same stack: the tool never fails a step the baseline passes,
and a step both fail leaves the tool's database exactly as it was."""
import shutil
import sys
from pathlib import Path

import pytest
from conftest import MODERN, ROOT, Project

LEGACY = Path(__file__).resolve().parent / "legacy_history"
REVISIONS = 9
SEED = [
    "INSERT INTO teams (id, name) VALUES (1, 't1'), (2, 't2')",
    "INSERT INTO users (id, name, team_id) VALUES (1, 'u1', 1), (2, 'u2', 2)",
    "INSERT INTO challenges (id, name, points, category) VALUES (1, 'c1', 100, 'misc')",
    "INSERT INTO challenges (id, name, points, category) VALUES (2, 'c2', 200, 'web')",
    "INSERT INTO solves (id, challenge_id, user_id, team_id) VALUES (1, 1, 1, 1)",
    "INSERT INTO solves (id, challenge_id, user_id, team_id) VALUES (2, 2, 2, 2), (3, 1, 2, 2)",
    "INSERT INTO awards (id, user_id, value, date) VALUES (1, 1, 10, '2020-01-01')",
    "INSERT INTO awards (id, user_id, value, date) VALUES (2, 2, 20, '2020-01-02')",
]


def legacy_project(path, database_url, tool):
    """The legacy app and its history as bare Flask-Migrate made them; for the tool, handed
    over as the README says (the import switched, env.py replaced)."""
    path.mkdir()
    shutil.copy(LEGACY / "models.py", path / "manage.py")
    project = Project(path, database_url)
    code, output = manage(project, "init")
    assert code == 0, output
    for revision in LEGACY.glob("*_*.py"):
        shutil.copy(revision, path / "migrations" / "versions")
    if tool:
        shutil.copytree(ROOT / "safe_migrate", path / "safe_migrate",
                        ignore=shutil.ignore_patterns("__pycache__"))
        project.env["LEGACY_TOOL"] = "1"
        code, output = manage(project, "env", "--force")
        assert code == 0, output
    return project


def manage(project, *args):
    """`python manage.py db ARGS`; bare Flask-Migrate 4.1's is `flask db ARGS`."""
    if MODERN and not project.env.get("LEGACY_TOOL"):
        return project.run(sys.executable, "-m", "flask", "db", *args,
                           env={"FLASK_APP": "manage.py"})
    return project.run(sys.executable, "manage.py", "db", *args)


def versions(project):
    return set((project.path / "migrations" / "versions").glob("*.py"))


@pytest.fixture
def two_databases(backend, request, tmp_path):
    if backend == "postgresql":
        create = request.getfixturevalue("new_pg_database")
        return create(), create()
    return f"sqlite:///{tmp_path / 'bare' / 'data.db'}", f"sqlite:///{tmp_path / 'tool' / 'data.db'}"


def test_a_legacy_history_runs_no_worse_than_bare_flask_migrate(tmp_path, two_databases):
    bare = legacy_project(tmp_path / "bare", two_databases[0], tool=False)
    tool = legacy_project(tmp_path / "tool", two_databases[1], tool=True)
    steps = ([["upgrade"], "seed", ["check"], ["migrate", "-m", "at head"]]
             + [["downgrade", "-1", "-x", "yes"]] * REVISIONS + [["upgrade", "+1"]] * REVISIONS)
    outcomes = []
    for step in steps:
        if step == "seed":
            for project in (bare, tool):
                for sql in SEED:
                    project.execute(sql)
            continue
        if step == ["check"]:  # bare Flask-Migrate 2.7 has no check (the tool's is checked)
            assert manage(tool, "check") == (
                0, "The models, the migrations' head and the database agree.\n")
            continue
        files = versions(bare)
        bare_code, _ = manage(bare, *step)
        for spurious in versions(bare) - files:  # keep the baseline on the same history
            spurious.unlink()
        before, files = tool.state(), versions(tool)
        code, output = manage(tool, *step)
        outcomes.append((step[0], bare_code, code))
        if bare_code == 0:
            assert code == 0, (step, output)
        elif code != 0:
            assert tool.state() == before, (step, output)
        assert versions(tool) == files, (step, output)  # `migrate` at head writes nothing

    assert [o for o in outcomes if o[2] != 0] == [], outcomes
    assert tool.version() == "6a3d7f1e2c09"
    assert tool.query("SELECT count(*) FROM solves") == [(0,)]  # the downgrade to base
