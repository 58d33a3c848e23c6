"""add date to solves

Revision ID: 9d4f2e8b7a06
Revises: e2a7b3c6d105
Create Date: 2019-06-01 12:00:00.000000

"""
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '9d4f2e8b7a06'
down_revision = 'e2a7b3c6d105'
branch_labels = None
depends_on = None


def upgrade():
    op.add_column('solves', sa.Column('date', sa.DateTime(), nullable=True,
                                      server_default='1970-01-01 00:00:00'))


def downgrade():
    with op.batch_alter_table('solves') as batch_op:
        batch_op.drop_column('date')
