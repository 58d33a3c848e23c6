"""add team_id to users

Revision ID: 3f2d9c7a4b02
Revises: 8a1c0e5b2f01
Create Date: 2019-02-01 12:00:00.000000

"""
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '3f2d9c7a4b02'
down_revision = '8a1c0e5b2f01'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('users') as batch_op:
        batch_op.add_column(sa.Column('team_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key('users_team_id_fkey', 'teams', ['team_id'], ['id'])


def downgrade():
    with op.batch_alter_table('users') as batch_op:
        batch_op.drop_constraint('users_team_id_fkey', type_='foreignkey')
        batch_op.drop_column('team_id')
