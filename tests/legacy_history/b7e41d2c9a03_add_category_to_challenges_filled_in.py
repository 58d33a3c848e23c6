"""add category to challenges, filled in

Revision ID: b7e41d2c9a03
Revises: 3f2d9c7a4b02
Create Date: 2019-03-01 12:00:00.000000

"""
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = 'b7e41d2c9a03'
down_revision = '3f2d9c7a4b02'
branch_labels = None
depends_on = None


def upgrade():
    op.add_column('challenges', sa.Column('category', sa.String(length=80), nullable=True))
    # Hand-written: every existing challenge goes in one category.
    op.execute("UPDATE challenges SET category = 'misc'")


def downgrade():
    with op.batch_alter_table('challenges') as batch_op:
        batch_op.drop_column('category')
