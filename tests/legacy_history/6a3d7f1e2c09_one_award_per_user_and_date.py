"""one award per user and date

Revision ID: 6a3d7f1e2c09
Revises: c8e2a4b6f908
Create Date: 2019-09-01 12:00:00.000000

"""
from alembic import op

# revision identifiers, used by Alembic.
revision = '6a3d7f1e2c09'
down_revision = 'c8e2a4b6f908'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('awards') as batch_op:
        batch_op.create_unique_constraint('awards_user_id_date_key', ['user_id', 'date'])


def downgrade():
    with op.batch_alter_table('awards') as batch_op:
        batch_op.drop_constraint('awards_user_id_date_key', type_='unique')
