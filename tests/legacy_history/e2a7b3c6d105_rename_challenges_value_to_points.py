"""rename challenges.value to points

Revision ID: e2a7b3c6d105
Revises: 5c9e8f1a2d04
Create Date: 2019-05-01 12:00:00.000000

"""
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = 'e2a7b3c6d105'
down_revision = '5c9e8f1a2d04'
branch_labels = None
depends_on = None


def upgrade():
    # Hand-written: autogenerate saw a dropped and an added column.
    with op.batch_alter_table('challenges') as batch_op:
        batch_op.alter_column('value', new_column_name='points', existing_type=sa.Integer())


def downgrade():
    with op.batch_alter_table('challenges') as batch_op:
        batch_op.alter_column('points', new_column_name='value', existing_type=sa.Integer())
