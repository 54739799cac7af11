"""Run a multi-statement SQL script inside Alembic's transaction.

asyncpg prepares every statement it is given, and a prepared statement holds one command;
the simple-query protocol of the driver connection runs a whole script at once.
"""
from __future__ import annotations

from alembic import op
from sqlalchemy.util import await_only


def run_script(sql: str) -> None:
    bind = op.get_bind()
    bind.exec_driver_sql("select 1")  # makes the driver open Alembic's transaction first
    await_only(bind.connection.driver_connection.execute(sql))
