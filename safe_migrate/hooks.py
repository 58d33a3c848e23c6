"""The app's own Alembic options, `Migrate(app, db, include_object=..., **kwargs)`, together
with this package's: where both have a hook, both run, so no command drops the app's.

`include_name`: a name is compared only if both hooks include it. `on_version_apply`: ours
(the checksum, the downgrade guard), then the app's. `process_revision_directives`: the app's
first, then ours on what it leaves (names-only changes left out, no file when nothing is
left, a warning for each operation that can lose data).
"""
from __future__ import annotations

from collections.abc import Callable


def app_options(state) -> dict:
    """The keyword arguments the app gave Migrate(...) for Alembic's context."""
    return dict(state.migrate.alembic_ctx_kwargs)


def include_name_with(ours: Callable, theirs: Callable | None) -> Callable:
    """Alembic's include_name hook: ours, and the app's if it has one."""
    if theirs is None:
        return ours

    def include_name(name, type_, parent_names) -> bool:
        return bool(ours(name, type_, parent_names) and theirs(name, type_, parent_names))

    return include_name


def include_object_with(ours: Callable, theirs: Callable | None) -> Callable:
    """Alembic's include_object hook: ours, and the app's if it has one."""
    if theirs is None:
        return ours

    def include_object(*args) -> bool:
        return bool(ours(*args) and theirs(*args))

    return include_object


def on_version_apply_with(ours: Callable, theirs: Callable | None) -> Callable:
    """Alembic's on_version_apply hook: ours, then the app's."""
    if theirs is None:
        return ours

    def on_version_apply(*args, **kwargs) -> None:
        ours(*args, **kwargs)
        theirs(*args, **kwargs)

    return on_version_apply


def directives_with(ours: Callable, theirs: Callable | None) -> Callable:
    """Alembic's process_revision_directives: the app's, then ours if a file is left."""
    if theirs is None:
        return ours

    def process_revision_directives(context, revision, directives) -> None:
        theirs(context, revision, directives)
        if directives:
            ours(context, revision, directives)

    return process_revision_directives


def check_options(state, include_name: Callable) -> dict:
    """The options `db check` compares with: the app's, with types compared unless it says
    otherwise, and include_name and include_object combined with ours."""
    options = {"compare_type": True, **app_options(state)}
    from .autogenerate import leave_expression_indexes

    options["include_name"] = include_name_with(include_name, options.get("include_name"))
    options["include_object"] = include_object_with(leave_expression_indexes,
                                                    options.get("include_object"))
    options["target_metadata"] = state.metadata
    return options
