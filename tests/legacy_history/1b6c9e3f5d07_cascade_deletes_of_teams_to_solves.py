"""cascade deletes of teams to solves

Revision ID: 1b6c9e3f5d07
Revises: 9d4f2e8b7a06
Create Date: 2019-07-01 12:00:00.000000

"""
from alembic import op

# revision identifiers, used by Alembic.
revision = '1b6c9e3f5d07'
down_revision = '9d4f2e8b7a06'
branch_labels = None
depends_on = None


# PostgreSQL named the foreign key when the table was created; SQLite left it unnamed, so
# batch mode names it the same way for the drop (Alembic's documented recipe).
naming_convention = {"fk": "%(table_name)s_%(column_0_name)s_fkey"}


def upgrade():
    with op.batch_alter_table('solves', naming_convention=naming_convention) as batch_op:
        batch_op.drop_constraint('solves_team_id_fkey', type_='foreignkey')
        batch_op.create_foreign_key('solves_team_id_fkey', 'teams', ['team_id'], ['id'],
                                    ondelete='CASCADE')


def downgrade():
    with op.batch_alter_table('solves', naming_convention=naming_convention) as batch_op:
        batch_op.drop_constraint('solves_team_id_fkey', type_='foreignkey')
        batch_op.create_foreign_key('solves_team_id_fkey', 'teams', ['team_id'], ['id'])
