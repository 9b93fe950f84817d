"""notify listening workers of new delivery jobs from the database (PostgreSQL)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 04:10:00

A statement-level trigger sends NOTIFY on the workers' channel for every INSERT into
delivery_jobs, whoever queues them (intake, admin opt-out, erasure, follow-up triggers); like
any NOTIFY it is delivered at commit, once per transaction. It replaces the intake's own
`SELECT pg_notify(...)`, a round trip per group commit. SQLite has no LISTEN: nothing to do.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# app.delivery.jobs.JOBS_CHANNEL when this revision was written (a migration keeps its values).
CHANNEL = "optin_delivery_jobs"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"""
        CREATE FUNCTION notify_new_delivery_jobs() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', '');
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER delivery_jobs_notify_insert
        AFTER INSERT ON delivery_jobs
        FOR EACH STATEMENT EXECUTE FUNCTION notify_new_delivery_jobs()
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS delivery_jobs_notify_insert ON delivery_jobs")
    op.execute("DROP FUNCTION IF EXISTS notify_new_delivery_jobs()")
