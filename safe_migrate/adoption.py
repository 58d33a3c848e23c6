"""What an app adopting the package must have, checked where it would otherwise go wrong
quietly: models whose constraints have names (`SQLAlchemy(app, metadata=metadata())`), and
the package's migrations/env.py (`db env` writes it).

Alembic can neither compare nor drop a constraint without a name: with a plain
`SQLAlchemy(app)`, removing `unique=True` from a model autogenerates nothing and `db check`
would see no difference, while the database keeps the constraint. So `db init` refuses to
start such a history, and `db check` says it cannot know, each in one line naming the edit.
"""
from __future__ import annotations

import filecmp
import shutil
from pathlib import Path

import sqlalchemy as sa

from .errors import MigrationError

# The convention keys for the constraints a model makes without naming them (`unique=True`,
# `ForeignKey(...)`); any other constraint or index left unnamed is listed by name below.
NEEDED_KEYS = ("uq", "fk")
THE_EDIT = ("add `from safe_migrate import metadata` and write "
            "`db = SQLAlchemy(app, metadata=metadata())`")
TEMPLATE_ENV = Path(__file__).resolve().parent / "templates" / "flask" / "env.py"


def unnamed_constraints(metadata: sa.MetaData) -> list[str]:
    """The models' unique, foreign key and check constraints and indexes that have no name
    (a primary key needs none: no migration drops it alone)."""
    found = []
    for table in metadata.sorted_tables:
        for item in sorted([*table.constraints, *table.indexes], key=describe):
            if not isinstance(item, sa.PrimaryKeyConstraint) and item.name is None:
                found.append(f"{table.name} {describe(item)}")
    return found


def describe(item) -> str:
    """`unique (name)`, `foreign key (company_id)`, `check (b > 0)`: a constraint or index by
    its columns (a check by its expression)."""
    kind = {sa.UniqueConstraint: "unique", sa.ForeignKeyConstraint: "foreign key",
            sa.CheckConstraint: "check", sa.Index: "index",
            sa.PrimaryKeyConstraint: "primary key"}.get(type(item), type(item).__name__)
    if isinstance(item, sa.CheckConstraint):
        return f"{kind} ({item.sqltext})"
    return f"{kind} ({', '.join(c.name for c in item.columns)})"


def naming_problem(metadata: sa.MetaData) -> str | None:
    """One line on models whose constraints have (or would get) no names, with the edit
    that fixes it; None for models with the naming convention the package needs."""
    missing = [key for key in NEEDED_KEYS if key not in metadata.naming_convention]
    unnamed = unnamed_constraints(metadata)
    if not (missing or unnamed):
        return None
    what = []
    if missing:
        what.append(f"its naming convention lacks {', '.join(missing)}")
    if unnamed:
        shown = ", ".join(unnamed[:3]) + (f" and {len(unnamed) - 3} more"
                                          if len(unnamed) > 3 else "")
        what.append(f"unnamed: {shown}")
    return (f"the models' MetaData names no constraints ({'; '.join(what)}), so Alembic can "
            f"neither compare nor drop them: {THE_EDIT}")


def unnamed_only_in_database(connection, metadata: sa.MetaData, options: dict) -> list[str]:
    """A line for each unique constraint the database has without a name (SQLite's, from a
    history that predates the convention) and the models do not have: Alembic sees no such
    constraint, so neither `db check` nor `db migrate` would notice it is gone. Tables the
    app's include_name or include_object leave out (`options`) are left out here too."""
    from .names import in_models, signature  # Alembic: only for `db check`

    include_name = options.get("include_name") or (lambda *args: True)
    include_object = options.get("include_object") or (lambda *args: True)
    inspector = sa.inspect(connection)
    lines = []
    for table in sorted(set(inspector.get_table_names()) & set(metadata.tables)):
        if not (include_name(table, "table", {"schema_name": None})
                and include_object(metadata.tables[table], table, "table", False, None)):
            continue
        models = in_models(metadata.tables[table])
        for unique in inspector.get_unique_constraints(table):
            columns = unique["column_names"]
            if unique["name"] is None and not {signature("unique", columns),
                                               signature("index", columns, True)} & models:
                lines.append(
                    f"unique ({', '.join(columns)}) on {table}: in the database, not in the "
                    "models, and without a name, so `db migrate` cannot drop it: put it back "
                    "in the models, name it with `db migrate -x names=convention` and "
                    "`db upgrade`, then take it out")
    return lines


def write_env(directory: Path, force: bool) -> str:
    """Write the package's env.py into the migrations folder; return what was done, in a
    line. An env.py that differs is replaced only with `force`, and kept beside it first."""
    if not (directory / "alembic.ini").is_file():
        raise MigrationError(f"no migrations folder at {directory} (no alembic.ini): "
                             "run `db init` to make one")
    target = directory / "env.py"
    if target.exists() and filecmp.cmp(target, TEMPLATE_ENV, shallow=False):
        return f"{target} is already safe_migrate's env.py; nothing changed"
    kept = None
    if target.exists():
        if not force:
            raise MigrationError(
                f"{target} differs from safe_migrate's env.py (Flask-Migrate's, or edited); "
                "nothing changed. To replace it, keeping it as env.py.bak, add --force")
        kept = free_name(target.with_name("env.py.bak"))
        shutil.copy2(target, kept)
    partial = target.with_name(".env.py.partial")
    shutil.copyfile(TEMPLATE_ENV, partial)
    partial.replace(target)
    return f"Wrote {target} from safe_migrate's template" + (
        f"; the old one is kept as {kept}" if kept else "")


def free_name(path: Path) -> Path:
    """`path`, or `path.1`, `path.2`, ...: the first that does not exist."""
    number, candidate = 0, path
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.name}.{number}")
    return candidate
