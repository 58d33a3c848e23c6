"""`db lint`: the revisions' operations that lock or break a live database, named before they
run, for CI. This module owns rendering the revisions for the rules, the rules, the waivers
and the findings' output.

PostgreSQL: each revision is rendered offline, as `db upgrade --sql` renders it (env.py's
offline mode, runner.run_offline), into a buffer that notes, for each statement Alembic
writes, the line of the revision file whose call wrote it (the revision's frame on the stack).
Every statement is parsed by PostgreSQL's own parser (pglast: libpg_query, as Squawk uses),
hand-written `op.execute` text included, and the rules below, named as Squawk names them,
read the parse trees.

SQLite: what matters there are table copies and destructive drops. The history is run on a
scratch file with the package's SQLite impl (sqlite_copies: native ALTER where SQLite can,
copies where it cannot), noting each copy (with the columns it drops, as sqlite_copies reads
them from Alembic's objects) and each drop, with the revision line that asked for it.

Table sizes come from the app's database when it is reachable; they are shown, never used
to excuse a PostgreSQL finding (the database CI reaches is seldom production). A SQLite copy
is a finding from COPY_ROWS rows, else a note.

A waiver is a comment in the revision, read with `tokenize`, on the line of the call or the
line above it: `# safe-migrate: allow RULE[, RULE] -- reason`.
"""
from __future__ import annotations

import io
import os
import sys
import tempfile
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from .errors import MigrationError

WAIVER = "safe-migrate:"
COPY_ROWS = 100_000  # a SQLite copy of a table this big is a finding, a smaller one a note
CONCURRENTLY = ("with postgresql_concurrently=True inside `with "
                "op.get_context().autocommit_block():`")
# Each rule: the safer pattern its message ends with (docs/lint.md has the same table).
RULES = {
    "require-concurrent-index-creation":
        f"create it {CONCURRENTLY}",
    "require-concurrent-index-deletion":
        f"drop it {CONCURRENTLY}",
    "ban-concurrent-index-creation-in-transaction":
        "CONCURRENTLY cannot run in a transaction: put it inside `with "
        "op.get_context().autocommit_block():`",
    "constraint-missing-not-valid":
        "add it NOT VALID (op.create_foreign_key(..., postgresql_not_valid=True), or "
        "CHECK (...) NOT VALID), then VALIDATE CONSTRAINT in another transaction "
        "(an autocommit_block or a later revision)",
    "disallowed-unique-constraint":
        f"create a unique index {CONCURRENTLY}, then ADD CONSTRAINT ... UNIQUE USING INDEX",
    "adding-not-nullable-field":
        "add CHECK (column IS NOT NULL) NOT VALID, VALIDATE it in another transaction, then "
        "SET NOT NULL (PostgreSQL 12+ uses the check instead of a scan) and drop the check",
    "adding-required-field":
        "add the column nullable (or with a constant server_default), fill it, then make "
        "it NOT NULL as adding-not-nullable-field says",
    "changing-column-type":
        "add a column of the new type, fill it in batches, switch the code to it, then drop "
        "the old one",
    "renaming-column":
        "add the new column, write both, fill it, switch the code to it, drop the old one in "
        "a later release",
    "renaming-table":
        "create the new table (or a view under the old name), switch the code, then drop the "
        "old one in a later release",
    "ban-drop-column":
        "deploy code that no longer uses it first; then drop it, with a waiver saying so",
    "ban-drop-table":
        "deploy code that no longer uses it first; then drop it, with a waiver saying so",
    "sqlite-table-copy":
        "use only what SQLite's ALTER TABLE does in place (add_column, drop_column of an "
        "unindexed column, rename), or waive it for a maintenance window",
    "mysql-rows-before-ddl":
        "move the data change after the DDL, or into a revision of its own: MySQL and MariaDB "
        "commit at each DDL statement, keeping the rows even if the revision fails later",
    "syntax-error":
        "fix the SQL: PostgreSQL's parser cannot read it",
    "invalid-waiver":
        "write `# safe-migrate: allow RULE[, RULE] -- why it is safe here`",
}
# Rules about locking a table that holds rows: not raised for a table the revision creates.
LOCK_RULES = {"require-concurrent-index-creation", "constraint-missing-not-valid",
              "disallowed-unique-constraint", "adding-not-nullable-field",
              "adding-required-field", "changing-column-type"}


@dataclass
class Finding:
    """One rule broken at one line of one revision file (or a note: level 'notice')."""
    rule: str
    path: str
    line: int
    message: str
    table: tuple | None = None  # (schema or None, name), for its size
    level: str = "error"

    def text(self, size: str | None) -> str:
        sized = f" ({self.table[1]}: {size})" if size and self.table else ""
        return f"{self.message}{sized}; {RULES[self.rule]}"


@dataclass
class Statement:
    """One statement Alembic wrote, parsed, and where in the revision it comes from."""
    node: object            # pglast's statement node
    path: str
    line: int
    transaction: int        # which transaction it runs in (0: none, outside BEGIN/COMMIT)


@dataclass
class Rendered:
    """What rendering saw: statements per revision file, and parse errors."""
    statements: dict[str, list[Statement]] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)


class RevisionFrames:
    """Which revision file, and which line of it, the running code was called from."""

    def __init__(self, paths) -> None:
        self.paths = {os.path.realpath(p) for p in paths}
        self.known: dict[str, str | None] = {}

    def caller(self) -> tuple[str, int] | None:
        frame = sys._getframe(1)
        while frame is not None:
            name = frame.f_code.co_filename
            if name not in self.known:
                real = os.path.realpath(name)
                self.known[name] = real if real in self.paths else None
            if self.known[name]:
                return self.known[name], frame.f_lineno
            frame = frame.f_back
        return None


class Recorder(io.StringIO):
    """Alembic's offline output buffer: each write, parsed, with the revision line that made
    it and the transaction it falls in (BEGIN/COMMIT as Alembic writes them)."""

    def __init__(self, frames: RevisionFrames, rendered: Rendered) -> None:
        super().__init__()
        self.frames = frames
        self.rendered = rendered
        self.transaction = 0
        self.transactions = 0

    def write(self, text: str) -> int:
        from pglast import parse_sql
        from pglast.parser import ParseError

        where = self.frames.caller()
        try:
            parsed = parse_sql(text)
        except ParseError as exc:
            if where:
                self.rendered.findings.append(Finding("syntax-error", *where, f"{exc}"))
            return len(text)
        self.take(parsed, where)
        return len(text)

    def take(self, parsed, where: tuple[str, int] | None) -> None:
        """Parsed statements from `where` (None: Alembic's own, such as its version table)."""
        from pglast.enums import TransactionStmtKind

        for raw in parsed:
            node = raw.stmt
            if type(node).__name__ == "TransactionStmt":
                if node.kind in (TransactionStmtKind.TRANS_STMT_BEGIN,
                                 TransactionStmtKind.TRANS_STMT_START):
                    self.transactions += 1
                    self.transaction = self.transactions
                elif node.kind in (TransactionStmtKind.TRANS_STMT_COMMIT,
                                   TransactionStmtKind.TRANS_STMT_ROLLBACK):
                    self.transaction = 0
                continue
            if where:
                self.rendered.statements.setdefault(where[0], []).append(
                    Statement(node, where[0], where[1], self.transaction))


# --- the PostgreSQL rules, on parse trees ------------------------------------------------


def relation(range_var) -> tuple | None:
    return (range_var.schemaname, range_var.relname) if range_var is not None else None


def name_of(table: tuple | None) -> str:
    return ".".join(p for p in table if p) if table else "?"


def check_statements(statements: list[Statement]) -> list[Finding]:
    """The rules over one revision's statements, in order."""
    from pglast.enums import AlterTableType as At
    from pglast.enums import ConstrType, ObjectType

    created = {relation(s.node.relation) for s in statements
               if type(s.node).__name__ in ("CreateStmt", "CreateTableAsStmt")
               and getattr(s.node, "relation", None) is not None}
    created |= {(None, t[1]) for t in created}
    not_valid: dict[str, int] = {}  # constraint added NOT VALID -> its transaction
    found = []

    def add(rule, s, message, table=None):
        if rule in LOCK_RULES and table is not None and (table in created
                                                         or (None, table[1]) in created):
            return
        found.append(Finding(rule, s.path, s.line, message, table))

    for s in statements:
        node, kind = s.node, type(s.node).__name__
        if kind == "IndexStmt":
            table = relation(node.relation)
            if not node.concurrent:
                add("require-concurrent-index-creation", s,
                    f"CREATE INDEX {node.idxname or ''} blocks writes to {name_of(table)} while "
                    "it builds", table)
            elif s.transaction:
                add("ban-concurrent-index-creation-in-transaction", s,
                    f"CREATE INDEX CONCURRENTLY {node.idxname or ''} inside a transaction fails",
                    table)
        elif kind == "DropStmt" and node.removeType == ObjectType.OBJECT_INDEX:
            names = ", ".join(".".join(p.sval for p in obj) for obj in node.objects)
            if not node.concurrent:
                add("require-concurrent-index-deletion", s,
                    f"DROP INDEX {names} blocks reads and writes of its table while it waits "
                    "and drops")
            elif s.transaction:
                add("ban-concurrent-index-creation-in-transaction", s,
                    f"DROP INDEX CONCURRENTLY {names} inside a transaction fails")
        elif kind == "DropStmt" and node.removeType == ObjectType.OBJECT_TABLE:
            for obj in node.objects:
                parts = [p.sval for p in obj]
                add("ban-drop-table", s, f"drops table {'.'.join(parts)}: code still running "
                    "that reads it fails", (parts[0] if len(parts) > 1 else None, parts[-1]))
        elif kind == "RenameStmt" and node.renameType == ObjectType.OBJECT_COLUMN:
            table = relation(node.relation)
            add("renaming-column", s, f"renames {name_of(table)}.{node.subname} to "
                f"{node.newname}: code still running that uses the old name fails", table)
        elif kind == "RenameStmt" and node.renameType == ObjectType.OBJECT_TABLE:
            table = relation(node.relation)
            add("renaming-table", s, f"renames {name_of(table)} to {node.newname}: code still "
                "running that uses the old name fails", table)
        elif kind == "AlterTableStmt" and node.objtype == ObjectType.OBJECT_TABLE:
            table = relation(node.relation)
            where = name_of(table)
            for cmd in node.cmds or ():
                if cmd.subtype == At.AT_AddConstraint:
                    con = cmd.def_
                    if con.contype in (ConstrType.CONSTR_FOREIGN, ConstrType.CONSTR_CHECK):
                        if con.skip_validation:
                            not_valid[con.conname] = s.transaction
                        else:
                            what = "FOREIGN KEY" if con.contype == ConstrType.CONSTR_FOREIGN \
                                else "CHECK"
                            add("constraint-missing-not-valid", s,
                                f"ADD CONSTRAINT {con.conname or ''} {what} checks every row of "
                                f"{where} while it holds a lock that blocks writes", table)
                    elif con.contype in (ConstrType.CONSTR_UNIQUE, ConstrType.CONSTR_PRIMARY) \
                            and not con.indexname:
                        add("disallowed-unique-constraint", s,
                            f"ADD CONSTRAINT {con.conname or ''} builds its index under a lock "
                            f"that blocks reads and writes of {where}", table)
                elif cmd.subtype == At.AT_ValidateConstraint and cmd.name in not_valid \
                        and not_valid[cmd.name] == s.transaction and s.transaction:
                    add("constraint-missing-not-valid", s,
                        f"VALIDATE CONSTRAINT {cmd.name} in the transaction that added it keeps "
                        f"the lock that blocks writes to {where} while it checks every row",
                        table)
                elif cmd.subtype == At.AT_SetNotNull:
                    add("adding-not-nullable-field", s,
                        f"SET NOT NULL on {where}.{cmd.name} scans {where} under an ACCESS "
                        "EXCLUSIVE lock", table)
                elif cmd.subtype == At.AT_AddColumn and required(cmd.def_):
                    add("adding-required-field", s,
                        f"adding {where}.{cmd.def_.colname} NOT NULL without a default fails "
                        "on a table that has rows", table)
                elif cmd.subtype == At.AT_AlterColumnType:
                    add("changing-column-type", s,
                        f"changing the type of {where}.{cmd.name} may rewrite {where} under an "
                        "ACCESS EXCLUSIVE lock", table)
                elif cmd.subtype == At.AT_DropColumn:
                    add("ban-drop-column", s, f"drops {where}.{cmd.name}: code still running "
                        "that reads it fails", table)
    return found


def required(column) -> bool:
    """A new column NOT NULL with no DEFAULT (nor generated, nor identity)."""
    from pglast.enums import ConstrType

    kinds = {c.contype for c in column.constraints or ()}
    return ConstrType.CONSTR_NOTNULL in kinds and not kinds & {
        ConstrType.CONSTR_DEFAULT, ConstrType.CONSTR_GENERATED, ConstrType.CONSTR_IDENTITY}


def check_sql(sql: str, path: str = "<sql>") -> list[Finding]:
    """The rules over a SQL script as Alembic writes it offline (for tests and tools): each
    statement's 'line' is the script's line where it starts."""
    from pglast import parse_sql

    rendered = Rendered()
    recorder = Recorder(RevisionFrames([]), rendered)
    encoded = sql.encode()  # libpg_query's locations count bytes
    for raw in parse_sql(sql):
        before = encoded[:raw.stmt_location].decode()
        body = encoded[raw.stmt_location:].decode()
        line = before.count("\n") + body[:len(body) - len(body.lstrip())].count("\n") + 1
        recorder.take([raw], (path, line))
    return [f for found in rendered.statements.values() for f in check_statements(found)]


# --- waivers ----------------------------------------------------------------------------


@dataclass
class Waiver:
    rules: set[str]
    reason: str
    lines: set[int]     # the comment's line, and the next line of code when it stands alone
    line: int


def read_waivers(path: str) -> tuple[list[Waiver], list[Finding]]:
    """The waiver comments of a revision file, and a finding for each malformed one."""
    waivers, bad = [], []
    with tokenize.open(path) as source:
        tokens = list(tokenize.generate_tokens(source.readline))
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
            tokenize.DEDENT, tokenize.ENCODING}
    for i, token in enumerate(tokens):
        if token.type != tokenize.COMMENT:
            continue
        text = token.string.lstrip("#").strip()
        if not text.startswith(WAIVER):
            continue
        line = token.start[0]
        words, _, reason = text[len(WAIVER):].partition(" -- ")
        verb, _, names = words.strip().partition(" ")
        rules = {r.strip() for r in names.split(",") if r.strip()}
        problem = None
        if verb != "allow" or not rules:
            problem = f"waiver `{text}` names no rule"
        elif rules - set(RULES):
            problem = f"waiver names unknown rule(s) {', '.join(sorted(rules - set(RULES)))}"
        elif not reason.strip():
            problem = f"waiver of {', '.join(sorted(rules))} gives no reason (after ` -- `)"
        if problem:
            bad.append(Finding("invalid-waiver", path, line, problem))
            continue
        lines = {line}
        if token.line.strip().startswith("#"):
            following = next((t for t in tokens[i + 1:] if t.type not in skip), None)
            if following is not None:
                lines.add(following.start[0])
        waivers.append(Waiver(rules, reason.strip(), lines, line))
    return waivers, bad


def waived(findings: list[Finding], paths) -> list[Finding]:
    """The findings no waiver of their revision file covers, and one for each malformed
    waiver in the revision files at `paths`."""
    waivers, kept = {}, []
    for path in paths:
        waivers[path], bad = read_waivers(path)
        kept += bad
    for finding in findings:
        if not any(finding.rule in w.rules and finding.line in w.lines
                   for w in waivers.get(finding.path, ())):
            kept.append(finding)
    return kept


# --- running it ---------------------------------------------------------------------------


def selected_revisions(script, revisions, since) -> list:
    """The Scripts to lint: those named, those after `since`, or the whole history."""
    if revisions and since:
        raise MigrationError("name revisions or --since, not both")
    if since:
        base = script.get_revision(since)
        return [s for s in script.iterate_revisions("heads", since)
                if s.revision != base.revision]
    if revisions:
        return [script.get_revision(r) for r in revisions]
    return list(script.walk_revisions())


def render_postgresql(config, script, chosen, since) -> Rendered:
    """Render the chosen revisions offline through env.py, noting each statement's line."""
    import logging

    from alembic import command

    rendered = Rendered()
    config.output_buffer = Recorder(RevisionFrames([s.path for s in chosen]), rendered)
    if since:
        ranges = [f"{since}:heads"]
    else:
        ranges = [f"{s.down_revision}:{s.revision}" if isinstance(s.down_revision, str)
                  else s.revision for s in chosen]
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)  # Alembic's "Running upgrade" lines: the findings speak
    try:
        for target in ranges:
            command.upgrade(config, target, sql=True)
    finally:
        logging.disable(previous)
    return rendered


def lint_postgresql(config, script, chosen, since) -> list[Finding]:
    rendered = render_postgresql(config, script, chosen, since)
    found = list(rendered.findings)
    for statements in rendered.statements.values():
        found += check_statements(statements)
    return found


def lint_sqlite(config, script, chosen, metadata) -> list[Finding]:
    """Run the history on a scratch SQLite file with the package's SQLite impl, noting the
    chosen revisions' copies and drops."""
    from alembic.runtime.environment import EnvironmentContext

    from .sqlite_copies import install, intent_of

    frames = RevisionFrames([s.path for s in chosen])
    found: list[Finding] = []
    copying: set[str] = set()

    def watch(impl) -> None:
        prep, drop_table, drop_column = (impl.prep_table_for_batch, impl.drop_table,
                                         impl.drop_column)

        def prep_table_for_batch(batch_impl, table):
            where = frames.caller()
            if where:
                copying.add(table.name)
                found.append(Finding("sqlite-table-copy", *where, f"copies {table.name} (a new "
                                     "table, every row, then a rename) under the write lock",
                                     (None, table.name)))
                for column in sorted(intent_of(batch_impl, impl.dialect).dropped):
                    found.append(Finding("ban-drop-column", *where, f"drops {table.name}."
                                         f"{column}, by copying {table.name}: code still "
                                         "running that reads it fails", (None, table.name)))
            return prep(batch_impl, table)

        def watched_drop_table(table, *args, **kw):
            result = drop_table(table, *args, **kw)
            where = frames.caller()
            if table.name in copying:
                copying.discard(table.name)  # the copy's own drop of the old table
            elif where:
                found.append(Finding("ban-drop-table", *where, f"drops table {table.name}: "
                                     "code still running that reads it fails",
                                     (None, table.name)))
            return result

        def watched_drop_column(table_name, column, *args, **kw):
            result = drop_column(table_name, column, *args, **kw)  # SQLite may refuse
            where = frames.caller()
            if where:
                found.append(Finding("ban-drop-column", *where, f"drops {table_name}."
                                     f"{column.name}: code still running that reads it fails",
                                     (None, table_name)))
            return result

        impl.prep_table_for_batch = prep_table_for_batch
        impl.drop_table = watched_drop_table
        impl.drop_column = watched_drop_column

    convention = config.get_section("safe_migrate", {}).get("naming_convention")
    with tempfile.TemporaryDirectory(prefix="migrate-lint-") as folder:
        engine = sa.create_engine(f"sqlite:///{Path(folder) / 'scratch.db'}")
        try:
            with engine.connect() as connection, EnvironmentContext(
                    config, script, fn=lambda rev, _: script._upgrade_revs("heads", rev)) as env:
                env.configure(connection=connection,
                              target_metadata=metadata if convention else sa.MetaData())
                install(env.get_context())
                watch(env.get_context().impl)
                with env.begin_transaction():
                    env.run_migrations()
        finally:
            engine.dispose()
    return found


def lint_mysql(chosen, dialect) -> list[Finding]:
    """MySQL/MariaDB: a revision that writes rows before a DDL statement (mysql.py, the
    check `db upgrade` makes before anything runs), found at its upgrade function."""
    from . import mysql

    found = []
    for script in chosen:
        upgrade = script.module.upgrade
        statements = mysql.rendered(upgrade, dialect)
        hit = mysql.rows_before_ddl(statements) if statements is not None else None
        if hit is not None:
            found.append(Finding("mysql-rows-before-ddl", os.path.realpath(script.path),
                                 upgrade.__code__.co_firstlineno,
                                 f"writes rows ({hit[0]}) before a DDL statement ({hit[1]})"))
    return found


def table_sizes(engine, tables: set) -> dict | None:
    """{(schema, name): 'N rows, SIZE'} from the database, or None when it is unreachable."""
    try:
        connection = engine.connect()
    except sa.exc.SQLAlchemyError:
        return None
    sizes = {}
    with connection:
        for schema, name in tables:
            if connection.dialect.name == "postgresql":
                row = connection.execute(sa.text(
                    "SELECT c.reltuples, pg_size_pretty(pg_total_relation_size(c.oid)) "
                    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE c.relname = :name AND c.relkind IN ('r', 'p') "
                    "AND n.nspname = coalesce(:schema, current_schema())"),
                    {"name": name, "schema": schema}).first()
                if row is None:
                    sizes[(schema, name)] = "not in the database yet"
                else:
                    rows = f"~{int(row[0]):,} rows, " if row[0] >= 0 else ""
                    sizes[(schema, name)] = f"{rows}{row[1]} in the database"
            elif sa.inspect(connection).has_table(name, schema):
                count = connection.execute(sa.select(sa.func.count()).select_from(
                    sa.table(name, schema=schema))).scalar()
                sizes[(schema, name)] = count
            else:
                sizes[(schema, name)] = "not in the database yet"
    return sizes


def lint(config, state, revisions=(), since=None, output="text") -> int:
    """Lint the chosen revisions; print the findings; return the exit code (1: a finding)."""
    from alembic.script import ScriptDirectory

    if output not in ("text", "github"):
        raise MigrationError(f"--format is text or github, not {output}")
    script = ScriptDirectory.from_config(config)
    chosen = selected_revisions(script, revisions, since)
    backend = state.url.get_backend_name()
    if backend == "postgresql":
        found = lint_postgresql(config, script, chosen, since)
    elif backend == "sqlite":
        found = lint_sqlite(config, script, chosen, state.metadata)
    elif backend == "mysql":
        found = lint_mysql(chosen, state.url.get_dialect()())
    else:
        raise MigrationError(f"db lint knows PostgreSQL, SQLite and MySQL, not {backend}")
    found = waived(found, [os.path.realpath(s.path) for s in chosen])
    reachable = backend in ("postgresql", "mysql") or (state.path is not None
                                                      and state.path.exists())
    sizes = table_sizes(state.engine, {f.table for f in found if f.table}) if reachable \
        else None
    for finding in found:
        size = sizes.get(finding.table) if sizes and finding.table else None
        if finding.rule == "sqlite-table-copy":
            finding.level = "error" if isinstance(size, int) and size >= COPY_ROWS \
                else "notice"
    findings = sorted(found, key=lambda f: (f.path, f.line, f.rule))
    for finding in findings:
        size = sizes.get(finding.table) if sizes and finding.table else None
        size = f"{size:,} rows in the database" if isinstance(size, int) else size
        print(format_finding(finding, finding.text(size), output))
    errors = [f for f in findings if f.level == "error"]
    if output == "text":
        where = "" if sizes is not None else " (no database reachable: rules only)"
        notes = f", {len(findings) - len(errors)} note(s)" if len(findings) > len(errors) else ""
        print(f"{len(errors)} finding(s){notes} in {len(chosen)} revision(s){where}")
    return 1 if errors else 0


def format_finding(finding: Finding, message: str, output: str) -> str:
    """One line: `path:line: rule: message`, or a GitHub workflow command."""
    path = os.path.relpath(finding.path) if finding.path else "?"
    if output == "github":
        return (f"::{finding.level} file={escape_property(path)},line={finding.line},"
                f"title={escape_property(finding.rule)}::{escape_data(message)}")
    label = "" if finding.level == "error" else f"{finding.level}: "
    return f"{path}:{finding.line}: {label}{finding.rule}: {message}"


def escape_data(text: str) -> str:
    """A workflow command's message, as GitHub's toolkit escapes it."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")
