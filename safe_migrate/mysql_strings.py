"""Model columns that MySQL cannot create: a `String` (or `Unicode`) without a length.

MySQL and MariaDB have no VARCHAR without a length, so `db.String` with none works on SQLite
and PostgreSQL and fails on MySQL, at the first `db upgrade` of the revision written from it.
`db migrate` refuses to write such a revision and `db check` names each column, in one line
with the edit, before anything runs. Which columns these are is SQLAlchemy's answer: the
column's type does not compile for the MySQL dialect.
"""
from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

THE_EDIT = "MySQL needs VARCHAR(n): write db.String(n), e.g. db.String(255)"


def lengthless_strings(metadata: sa.MetaData) -> list[str]:
    """`table.column: String without a length` for each model column whose type MySQL
    cannot create for want of a length."""
    dialect = mysql.dialect()
    found = []
    for table in metadata.sorted_tables:
        for column in table.columns:
            try:
                column.type.compile(dialect=dialect)
            except sa.exc.CompileError:
                if getattr(column.type, "length", 0) is None:
                    found.append(f"{table.name}.{column.name}: "
                                 f"{type(column.type).__name__} without a length")
    return found


def string_problem(url: sa.engine.URL, metadata: sa.MetaData) -> str | None:
    """On MySQL, one line naming the models' String columns without a length and the edit;
    None elsewhere, or when every one has a length."""
    if url.get_backend_name() != "mysql":
        return None
    found = lengthless_strings(metadata)
    if not found:
        return None
    return f"{'; '.join(found)}; {THE_EDIT}"
