"""What `db check` compares in one database: its `alembic_version` against the migrations'
head, its schema against the models (Alembic's `compare_metadata`, with the app's options),
what Alembic cannot compare (constraints without names), and on SQLite the rows that break a
foreign key. The one comparison for a single database and for each database of a multidb
history, so both answer the same."""
from __future__ import annotations

import warnings

import sqlalchemy as sa


def check_lines(conn, metadata: sa.MetaData, options: dict, script_heads) -> list[str]:
    """One line per difference between the database on `conn`, the models' `metadata` and
    the migrations' heads; [] when they agree. `options` are Alembic's context options
    (`hooks.check_options`): the app's include_name/include_object apply here too."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from .adoption import naming_problem, unnamed_only_in_database
    from .autogenerate import describe_difference
    from .mysql_strings import string_problem
    from .names import NamesOnly
    from .runner import revision_label

    lines = []
    naming = naming_problem(metadata)  # then the comparison below cannot be trusted
    if naming:
        lines.append(f"naming convention: {naming}")
    strings = string_problem(conn.engine.url, metadata)  # MySQL could not create them
    if strings:
        lines.append(f"column types: {strings}")
    context = MigrationContext.configure(conn, opts={**options, "target_metadata": metadata})
    heads = context.get_current_heads()
    if set(heads) != set(script_heads):
        lines.append(f"database at {revision_label(heads)}, migrations' head is "
                     f"{revision_label(script_heads)}: run `db upgrade`")
    with warnings.catch_warnings():
        # SQLAlchemy's reflection warnings (a foreign-key cycle, an expression index) are
        # not differences; the lines below are what check reports.
        warnings.simplefilter("ignore", sa.exc.SAWarning)
        differences = NamesOnly(conn, metadata).differences(compare_metadata(context, metadata))
    for difference in differences:
        lines += describe_difference(difference)
    lines += unnamed_only_in_database(conn, metadata, context.opts)
    if conn.dialect.name == "sqlite":  # rows no revision may be blamed for (sqlite.py)
        from .sqlite import describe_violations, foreign_key_violations

        violations = foreign_key_violations(conn)
        if violations:
            lines.append(f"foreign keys: {describe_violations(violations)}")
    return lines
