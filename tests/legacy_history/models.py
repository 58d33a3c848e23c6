"""The legacy project's app at the head of its history, run with bare Flask-Migrate
(LEGACY_TOOL unset: 2.7's MigrateCommand, or 4.1's `flask db`) or with safe_migrate
(LEGACY_TOOL=1): only the imports differ (safe_migrate's `metadata` names every constraint), as
the README's adoption steps say."""
import os

from flask import Flask
from flask_sqlalchemy import SQLAlchemy

try:
    from flask_script import Manager
except ImportError:  # Flask 2.2 and later: flask-script-ng
    from flask_script_ng import Manager

if os.environ.get("LEGACY_TOOL"):
    from safe_migrate import Migrate, MigrateCommand, metadata
else:
    from flask_migrate import Migrate
    from sqlalchemy import MetaData as metadata
    try:
        from flask_migrate import MigrateCommand
    except ImportError:  # Flask-Migrate 4: its `db` is `flask db` alone
        MigrateCommand = None

app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = os.environ.get("DATABASE_URL", "sqlite:///data.db")
app.config["SQLALCHEMY_TRACK_MODIFICATIONS"] = False
db = SQLAlchemy(app, metadata=metadata())
migrate = Migrate(app, db)
manager = Manager(app)
if MigrateCommand is not None:
    manager.add_command("db", MigrateCommand)


class Teams(db.Model):
    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(80), unique=True, nullable=False)


class Users(db.Model):
    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(80), unique=True, nullable=False)
    team_id = db.Column(db.Integer, db.ForeignKey("teams.id"))


class Challenges(db.Model):
    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(80), nullable=False)
    points = db.Column(db.Integer)
    category = db.Column(db.String(80))


class Solves(db.Model):
    __table_args__ = (db.UniqueConstraint("challenge_id", "user_id"),
                      db.UniqueConstraint("challenge_id", "team_id"))
    id = db.Column(db.Integer, primary_key=True)
    challenge_id = db.Column(db.Integer, db.ForeignKey("challenges.id"))
    user_id = db.Column(db.Integer, db.ForeignKey("users.id"))
    team_id = db.Column(db.Integer, db.ForeignKey("teams.id", ondelete="CASCADE"))
    date = db.Column(db.DateTime, server_default="1970-01-01 00:00:00")


class Awards(db.Model):
    __table_args__ = (db.UniqueConstraint("user_id", "date", name="awards_user_id_date_key"),)
    id = db.Column(db.Integer, primary_key=True)
    user_id = db.Column(db.Integer, db.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    value = db.Column(db.Integer)
    date = db.Column(db.DateTime)


if __name__ == "__main__":
    manager.run()
