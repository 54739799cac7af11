"""Standard Webhooks deliveries: the SHA-256 of the body a webhook-id first came with, so the same
id with the same body returns the same run and with another body is refused (DESIGN §9.4).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""
from migrations.sqlscript import run_script

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = r"""
alter table runs add column delivery_hash bytea;
comment on column runs.delivery_hash is 'SHA-256 of the webhook body that created this run (with delivery_id)';
"""

DOWNGRADE = r"""
alter table runs drop column delivery_hash;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
