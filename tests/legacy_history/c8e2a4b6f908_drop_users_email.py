"""drop users.email

Revision ID: c8e2a4b6f908
Revises: 1b6c9e3f5d07
Create Date: 2019-08-01 12:00:00.000000

"""
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = 'c8e2a4b6f908'
down_revision = '1b6c9e3f5d07'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('users') as batch_op:
        batch_op.drop_column('email')


def downgrade():
    with op.batch_alter_table('users') as batch_op:
        batch_op.add_column(sa.Column('email', sa.String(length=128), nullable=True))
