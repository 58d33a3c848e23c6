"""The revision cache (safe_migrate/revisions.py) answers as Alembic does, or steps aside.

The differential test generates histories (linear, branches, merges, branch labels,
depends_on, nested folders with recursive_version_locations, a second version_locations
folder, sourceless revisions) and edits to them (some keeping the file's size and mtime),
and compares what the cache says with what Alembic's own ScriptDirectory and commands say
for the same folder. It runs a fixed, bounded set of examples; to search longer:
    REVISION_CACHE_EXAMPLES=500 python -m pytest tests/test_revision_cache.py -k differential
(HYPOTHESIS_SEED=<n> for other examples than the fixed ones).
The CLI tests run both CLIs on a copy of the project.
"""
import io
import json
import os
import py_compile
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import CLIS
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from safe_migrate.extension import Migrate
from safe_migrate.revisions import CACHE_FORMAT, CACHE_NAME, file_hashes, revision_index

EXAMPLES = int(os.environ.get("REVISION_CACHE_EXAMPLES", "12"))  # per configuration
SEED = int(os.environ.get("HYPOTHESIS_SEED", "20261130"))
REVISION = '''"""{message}

Revision ID: {rev}
"""
from alembic import op
import sqlalchemy as sa

revision = {rev!r}
down_revision = {down!r}
branch_labels = {labels!r}
depends_on = {depends!r}


def upgrade():
    pass


def downgrade():
    pass
'''
# alembic.ini's [alembic] section for each configuration the cache models, and where its
# revision files may go (folders relative to the migrations folder).
CONFIGS = {
    "default": ("", ["versions"]),
    "recursive": ("recursive_version_locations = true\n",
                  ["versions", "versions/2026", "versions/2026/07"]),
    "two folders, os separator": (
        "path_separator = os\nversion_locations = %(here)s/versions" + os.pathsep
        + "%(here)s/more\n", ["versions", "more"]),
    "two folders, legacy split, recursive": (
        ("version_locations = %(here)s/versions, %(here)s/more\n"
         "recursive_version_locations = true\n"), ["versions", "more", "more/nested"]),
    "sourceless": ("sourceless = true\n", ["versions"]),
}


# --- Alembic's own answer ------------------------------------------------------------------


def alembic_config(directory):
    config = Migrate(directory=str(directory)).get_config(str(directory))
    config.stdout = io.StringIO()
    return config


def alembic_answer(directory):
    """What Alembic says about the folder: the facts the cache keeps, from its own
    ScriptDirectory and from command.heads/history's printed lines."""
    from alembic import command
    from alembic.script import ScriptDirectory

    config = alembic_config(directory)
    script = ScriptDirectory.from_config(config)
    revisions = list(script.walk_revisions())
    heads_config, history_config = alembic_config(directory), alembic_config(directory)
    command.heads(heads_config)
    command.history(history_config)
    return {"lines": {rev.revision: rev.cmd_format(False) for rev in revisions},
            "heads": sorted(script.get_heads()),
            "heads_lines": heads_config.stdout.getvalue().splitlines(),
            "history_lines": history_config.stdout.getvalue().splitlines(),
            "checksums": {rev.revision: file_sha256(rev.path) for rev in revisions}}


def file_sha256(path):
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cache_answer(directory):
    index = revision_index(Path(directory))
    assert index is not None, "the cache stepped aside for a configuration it models"
    return {"lines": index["lines"], "heads": index["heads"],
            "heads_lines": index["heads_lines"], "history_lines": index["history_lines"],
            # what a no-op upgrade compares with the recorded checksums
            "checksums": {rev: index["hashes"][path] for rev, path in index["files"].items()}}


LABELS = re.compile(r"\((label\d+(?:, label\d+)*)\)")


def labels_sorted(lines):
    """Alembic prints a revision's inherited branch labels in a set's order, which varies
    with PYTHONHASHSEED (from run to run of `db heads` too): compare them sorted."""
    return [LABELS.sub(lambda m: "(" + ", ".join(sorted(m[1].split(", "))) + ")", line)
            for line in lines]


def outcome(answer, directory):
    try:
        found = answer(directory)
        return {**found, "heads_lines": labels_sorted(found["heads_lines"]),
                "history_lines": labels_sorted(found["history_lines"])}
    except Exception as exc:  # noqa: BLE001 (Alembic refuses the history: the cache must too)
        return type(exc).__name__


# --- generated histories -------------------------------------------------------------------


class History:
    """A migrations folder written from a generated plan."""

    def __init__(self, root, config):
        self.root = Path(root)
        self.config = config
        ini, self.folders = CONFIGS[config]
        (self.root / "alembic.ini").write_text(f"[alembic]\n{ini}")
        for folder in self.folders:
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self.revisions = {}  # rev: (path, down, depends)

    def add(self, index, down, labels, depends, folder, compiled=False):
        rev = f"{index:04d}abcdef{index:02d}"[-12:]
        path = self.root / folder / f"{rev}_step_{index}.py"
        path.write_text(REVISION.format(message=f"step {index:03d}", rev=rev, down=down,
                                        labels=labels, depends=depends))
        if compiled:  # sourceless: a .pyc beside it, or in __pycache__, and no source
            where = (path.with_suffix(".pyc") if index % 2
                     else path.parent / "__pycache__" / f"{path.stem}.{sys.implementation.cache_tag}.pyc")
            where.parent.mkdir(exist_ok=True)
            py_compile.compile(str(path), cfile=str(where), doraise=True)
            path.unlink()
            path = where
        self.revisions[rev] = (path, down, depends)
        return rev

    def referenced(self):
        refs = set()
        for _, down, depends in self.revisions.values():
            for ref in (down, depends):
                refs |= set(ref) if isinstance(ref, tuple) else {ref}
        return refs


def same_size_and_mtime(path, old, new):
    """Edit a file so that its size and mtime stay as they were (as `touch -r` leaves it)."""
    stat = path.stat()
    text = path.read_text()
    assert len(old) == len(new) and old in text
    path.write_text(text.replace(old, new, 1))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size


@st.composite
def scenarios(draw, config):
    folders = CONFIGS[config][1]
    plan = []
    for index in range(draw(st.integers(1, 7))):
        parents = draw(st.lists(st.integers(0, index - 1), max_size=2, unique=True)
                       if index else st.just([]))
        if index and not parents and draw(st.booleans()):
            parents = [index - 1]
        plan.append({
            "parents": parents,
            "label": draw(st.sampled_from([None, f"label{index}"])),
            "depends": draw(st.sampled_from([None, *range(index)])) if index else None,
            "folder": draw(st.sampled_from(folders)),
            "compiled": config == "sourceless" and draw(st.booleans()),
        })
    edits = draw(st.lists(st.sampled_from(
        ["parent", "doc", "add", "add nested", "delete head", "touch", "stray"]),
        max_size=4))
    return plan, edits, draw(st.randoms(use_true_random=False))


def apply_edit(history, edit, random):
    """Change the folder as a user might; True if Alembic should see a change."""
    sources = {rev: (path, down) for rev, (path, down, _) in history.revisions.items()
               if path.suffix == ".py"}
    order = list(history.revisions)
    if edit == "parent":  # a pending revision's down_revision, same size, same mtime
        choices = [rev for rev, (_, down) in sources.items()
                   if isinstance(down, str) and order.index(rev) > 1]
        if not choices:
            return
        rev = random.choice(choices)
        path, down = sources[rev]
        new = random.choice([r for r in order[:order.index(rev)] if r != down] or [down])
        same_size_and_mtime(path, f"down_revision = {down!r}", f"down_revision = {new!r}")
        history.revisions[rev] = (path, new, history.revisions[rev][2])
    elif edit == "doc" and sources:
        path, _ = sources[random.choice(sorted(sources))]
        old, new = ('"""step', '"""STEP')
        same_size_and_mtime(path, *((old, new) if old in path.read_text() else (new, old)))
    elif edit in ("add", "add nested"):
        folders = history.folders if edit == "add nested" else history.folders[:1]
        history.add(len(order) + 10, random.choice(order), None, None,
                    random.choice(folders))
    elif edit == "delete head":
        free = [rev for rev in order if rev not in history.referenced()]
        if free:
            rev = random.choice(free)
            history.revisions.pop(rev)[0].unlink()
    elif edit == "touch" and sources:
        path, _ = sources[random.choice(sorted(sources))]
        os.utime(path, ns=(1, 1))
    elif edit == "stray":  # files Alembic does not read as revisions
        versions = history.root / history.folders[0]
        (versions / "__init__.py").write_text("raise RuntimeError('not a revision')\n")
        (versions / ".#0001abcdef01_step_1.py").write_text("raise RuntimeError('a lock')\n")
        (versions / "README").write_text("not a revision\n")


# Alembic warns that the legacy split of version_locations is deprecated; it is modelled.
@pytest.mark.filterwarnings("ignore:No path_separator found:DeprecationWarning")
@seed(SEED)
@settings(max_examples=EXAMPLES, deadline=None, derandomize="HYPOTHESIS_SEED" not in os.environ,
          database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@pytest.mark.parametrize("config", sorted(CONFIGS))
@given(data=st.data())
def test_differential_the_cache_answers_as_alembic_does(config, data):
    plan, edits, random = data.draw(scenarios(config))
    dont_write_bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # a stale .pyc misleads Alembic too: its own test below
    try:
        with tempfile.TemporaryDirectory() as root:
            history = History(root, config)
            revs = []
            for index, step in enumerate(plan):
                parents = tuple(revs[i] for i in step["parents"])
                down = parents[0] if len(parents) == 1 else (parents or None)
                depends = revs[step["depends"]] if step["depends"] is not None else None
                revs.append(history.add(index + 1, down, step["label"], depends,
                                        step["folder"], step["compiled"]))
            for edit in [None, *edits]:
                if edit:
                    apply_edit(history, edit, random)
                expected = outcome(alembic_answer, root)
                assert outcome(cache_answer, root) == expected, (config, edit)
                if isinstance(expected, dict):  # answered from the cache file, now
                    cached = json.loads(Path(root, "__pycache__", CACHE_NAME).read_text())
                    assert cached["key"] == file_hashes(Path(root))[0]
                    assert outcome(cache_answer, root) == expected
    finally:
        sys.dont_write_bytecode = dont_write_bytecode


# --- where the cache steps aside, and what it does with a stale .pyc ----------------------


def linear_history(root, config="default", count=3):
    history = History(root, config)
    down = None
    for index in range(1, count + 1):
        down = history.add(index, down, None, None, history.folders[0])
    return history


UNMODELLED = {
    "revision_environment": lambda root: add_option(root, "revision_environment = true"),
    "an option it does not know": lambda root: add_option(root, "future_option = 1"),
    "an unknown path_separator": lambda root: add_option(
        root, "path_separator = comma\nversion_locations = %(here)s/versions"),
    "a package resource": lambda root: add_option(root, "version_locations = pkg:versions"),
    "an unreadable alembic.ini": lambda root: add_option(root, "no equals sign"),
    "a symlinked revision file": lambda root: os.symlink(
        next(Path(root, "versions").glob("0001*.py")), Path(root, "versions", "link.py")),
    "a revision id that is not a literal": lambda root: Path(root, "versions", "x_ids.py")
        .write_text("'''computed'''\nrevision = 'ab' + 'cd'\ndown_revision = None\n"),
    "a revision id from another module": lambda root: Path(root, "versions", "x_imp.py")
        .write_text("'''imported'''\nfrom os import sep as revision\ndown_revision = None\n"),
}


def add_option(root, line):
    ini = Path(root, "alembic.ini")
    ini.write_text(ini.read_text() + line + "\n")


@pytest.mark.parametrize("unusual", sorted(UNMODELLED))
def test_the_cache_steps_aside_where_it_does_not_model_alembic(tmp_path, unusual):
    linear_history(tmp_path)
    assert revision_index(tmp_path) is not None
    UNMODELLED[unusual](tmp_path)
    assert revision_index(tmp_path) is None
    assert revision_index(tmp_path) is None  # and so it stays, from the cache file


def test_a_missing_folder_steps_aside_for_alembic_to_say_so(tmp_path):
    assert revision_index(tmp_path / "nosuch") is None


def test_a_stale_pyc_is_alembics_answer_too(tmp_path):
    # Python runs a revision's .pyc while the source's size and mtime match it: an edit that
    # keeps both is not seen by Alembic (nor by `db upgrade`). The cache must not answer
    # from the source then; without the .pyc, Alembic and the cache see the edit.
    dont_write_bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = False
    try:
        history = History(tmp_path, "default")
        first = history.add(1, None, None, None, "versions")
        second = history.add(2, first, None, None, "versions")
        third = history.add(3, first, None, None, "versions")
        assert cache_answer(tmp_path) == alembic_answer(tmp_path)
        assert list(Path(tmp_path, "versions", "__pycache__").glob("*.pyc"))
        same_size_and_mtime(history.revisions[third][0], f"down_revision = {first!r}",
                            f"down_revision = {second!r}")
        stale = alembic_answer(tmp_path)
        assert stale["heads"] == [second, third]  # the old down_revision, from the .pyc
        assert revision_index(tmp_path) is None
    finally:
        sys.dont_write_bytecode = dont_write_bytecode
    shutil.rmtree(tmp_path / "versions" / "__pycache__")
    fresh = alembic_answer(tmp_path)
    assert fresh["heads"] == [third]
    assert revision_index(tmp_path) is None  # a stale .pyc may still be about: Alembic's


# --- a cache file of the wrong shape is rebuilt -------------------------------------------


def good_index(root):
    return {k: v for k, v in revision_index(root).items() if k != "hashes"}


SHAPES = {
    "null": lambda key, index: None,
    "a list": lambda key, index: [],
    "a string": lambda key, index: "cache",
    "an older format": lambda key, index: {"format": 2},
    "no key": lambda key, index: {"format": CACHE_FORMAT, "index": index},
    "no index": lambda key, index: {"format": CACHE_FORMAT, "key": key},
    "a list index": lambda key, index: {"format": CACHE_FORMAT, "key": key, "index": []},
    "a missing entry": lambda key, index: {
        "format": CACHE_FORMAT, "key": key,
        "index": {k: v for k, v in index.items() if k != "heads"}},
    "a wrong type": lambda key, index: {
        "format": CACHE_FORMAT, "key": key, "index": {**index, "lines": []}},
    "a number for a line": lambda key, index: {
        "format": CACHE_FORMAT, "key": key,
        "index": {**index, "lines": dict.fromkeys(index["lines"], 1)}},
    "a null head": lambda key, index: {
        "format": CACHE_FORMAT, "key": key, "index": {**index, "heads": [None]}},
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_cache_file_of_the_wrong_shape_is_rebuilt(tmp_path, shape):
    linear_history(tmp_path)
    index = good_index(tmp_path)
    key = file_hashes(tmp_path)[0]
    cache = tmp_path / "__pycache__" / CACHE_NAME
    cache.write_text(json.dumps(SHAPES[shape](key, index)))
    assert good_index(tmp_path) == index
    assert json.loads(cache.read_text()) == {"format": CACHE_FORMAT, "key": key, "index": index}


@pytest.mark.parametrize("text", ["", "{", "\x00\xff", "[1, 2"])
def test_a_cache_file_that_is_not_json_is_rebuilt(tmp_path, text):
    linear_history(tmp_path)
    index = good_index(tmp_path)
    (tmp_path / "__pycache__" / CACHE_NAME).write_text(text)
    assert good_index(tmp_path) == index


# --- through both CLIs ---------------------------------------------------------------------

HEAD = "edee0e2ae9aa"  # the committed history's head
CREATE_TABLE = '''"""{rev}"""
import sqlalchemy as sa
from alembic import op

revision = {rev!r}
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade():
    op.create_table({table!r}, sa.Column("id", sa.Integer, primary_key=True))


def downgrade():
    op.drop_table({table!r})
'''


@pytest.fixture(params=CLIS)
def cli(request):
    return request.param


def write_revision(path, rev, down, table):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(CREATE_TABLE.format(rev=rev, down=down, table=table))


def set_options(project, lines):
    ini = project.path / "migrations" / "alembic.ini"
    ini.write_text(ini.read_text().replace("[alembic]\n", "[alembic]\n" + lines, 1))


def test_a_revision_in_a_nested_folder_or_another_location_is_applied(sqlite_project):
    project, migrations = sqlite_project, sqlite_project.path / "migrations"
    assert project.db("upgrade")[0] == 0
    set_options(project, "recursive_version_locations = true\n")
    assert project.db("upgrade")[0] == 0
    write_revision(migrations / "versions" / "2026" / "nest0001_nested.py", "nest0001", HEAD,
                   "nested_one")

    code, output = project.db("check")
    assert code == 1 and f"database at {HEAD}, migrations' head is nest0001" in output, output
    code, output = project.db("upgrade", "-x", "backup=off")
    assert code == 0 and "-> nest0001" in output, output
    assert project.version() == "nest0001" and "nested_one" in project.tables()
    assert project.db("current") == (0, "nest0001 (head)\n")

    set_options(project, f"path_separator = os\nversion_locations = %(here)s/versions"
                         f"{os.pathsep}%(here)s/extra\n")
    write_revision(migrations / "extra" / "extr0001_extra.py", "extr0001", "nest0001",
                   "extra_one")
    assert project.db("heads") == project.db("heads", "--resolve-dependencies") == (
        0, "extr0001 (head)\n")
    code, output = project.db("upgrade", "-x", "backup=off")
    assert code == 0 and "nest0001 -> extr0001" in output, output
    assert project.version() == "extr0001" and "extra_one" in project.tables()
    assert project.db("upgrade") == (0, "Already at head (extr0001).\n")  # from the cache
    assert project.db("history") == project.db("history", "-r", "base:heads")


def test_an_edit_that_keeps_size_and_mtime_is_seen(sqlite_project):
    # Without bytecode (PYTHONDONTWRITEBYTECODE=1, as container images often set it), Python
    # reads the edited source; with it, Python and so Alembic run the stale .pyc
    # (test_a_stale_pyc_is_alembics_answer_too).
    project, env = sqlite_project, {"PYTHONDONTWRITEBYTECODE": "1"}
    assert project.db("upgrade", env=env)[0] == 0
    first, second = "aaaa00000001", "bbbb00000002"  # as long as HEAD
    for rev in (first, second):
        project.add_revision(rev, "def upgrade():\n    pass\n\n\ndef downgrade():\n"
                                  "    pass\n", down_revision=HEAD)
    assert project.db("heads", env=env) == (0, f"{first} (head)\n{second} (head)\n")

    pending = project.path / "migrations" / "versions" / f"{second}_test.py"
    same_size_and_mtime(pending, f"down_revision = {HEAD!r}", f"down_revision = {first!r}")

    assert project.db("heads", env=env) == project.db(
        "heads", "--resolve-dependencies", env=env) == (0, f"{second} (head)\n")
    code, output = project.db("upgrade", "-x", "backup=off", env=env)
    assert code == 0 and f"{first} -> {second}" in output, output
    assert project.version() == second


def test_a_wrong_directory_is_the_same_line_on_every_command(sqlite_project):
    lines = {args: sqlite_project.db(*args, "-d", "nosuch")
             for args in (("current",), ("heads",), ("history",), ("upgrade",), ("check",),
                          ("current", "--verbose"))}
    expected = (1, ("Error: Path doesn't exist: nosuch. Please use the 'init' command to "
                    "create a new scripts folder.\n"))
    assert lines == dict.fromkeys(lines, expected)


@pytest.mark.parametrize("text", ["null", "[]", '{"format": 2}', '"index"'])
def test_a_cache_file_of_the_wrong_shape_is_rebuilt_by_the_commands(sqlite_project, text):
    project, migrations = sqlite_project, sqlite_project.path / "migrations"
    assert project.db("upgrade")[0] == 0
    # Where this version keeps the cache, and where the one before kept it.
    for folder in (migrations, migrations / "versions"):
        (folder / "__pycache__").mkdir(exist_ok=True)
        (folder / "__pycache__" / CACHE_NAME).write_text(text)
    assert project.db("current") == (0, f"{HEAD} (head)\n")
    assert project.db("heads") == (0, f"{HEAD} (head)\n")
    assert project.db("upgrade") == (0, f"Already at head ({HEAD}).\n")
    cached = json.loads((migrations / "__pycache__" / CACHE_NAME).read_text())
    assert cached["format"] == CACHE_FORMAT and cached["index"]["heads"] == [HEAD]
