"""policy snapshot version

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 02:44:18.535117
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0008'
down_revision: str | Sequence[str] | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Cycles launched before snapshots were versioned hold version 1; the server default fills
    # them in (and stays, for rows written without the column). New launches write their version.
    with op.batch_alter_table('cycles', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('snapshot_version', sa.Integer(), server_default='1', nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table('cycles', schema=None) as batch_op:
        batch_op.drop_column('snapshot_version')
