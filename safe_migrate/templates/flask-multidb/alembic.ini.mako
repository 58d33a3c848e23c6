# A multi-database configuration (SQLALCHEMY_BINDS).

[alembic]
# template used to generate migration files
# file_template = %%(rev)s_%%(slug)s

# set to 'true' to run the environment during
# the 'revision' command, regardless of autogenerate
# revision_environment = false


[safe_migrate]
# This history names constraints with safe_migrate.NAMING_CONVENTION from its first revision
# on: the ones its revisions leave unnamed get their names from it when they run. A history
# without this line (one that predates the convention) keeps the names its revisions and
# database already use, whatever the models' metadata says.
naming_convention = from the first revision
# Each revision has an upgrade_<bind>() and a downgrade_<bind>() per database (the default
# database's bind is ''); safe_migrate runs them database by database (docs/multidb.md).
multidb = true


# Logging configuration
[loggers]
keys = root,sqlalchemy,alembic,alembic_plugins,flask_migrate

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARN
handlers = console
qualname =

[logger_sqlalchemy]
level = WARN
handlers =
qualname = sqlalchemy.engine

[logger_alembic]
level = INFO
handlers =
qualname = alembic

# Alembic 1.19 announces each autogenerate plugin at INFO on every `db migrate`.
[logger_alembic_plugins]
level = WARN
handlers =
qualname = alembic.runtime.plugins

[logger_flask_migrate]
level = INFO
handlers =
qualname = flask_migrate

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
datefmt = %H:%M:%S
