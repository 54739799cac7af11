"""The pruner the worker runs: every MESHHOOK_RETENTION_INTERVAL_S it deletes, in small batches
of their own transactions (so no lock is held for long and resumes keep flowing), the lineage
trees whose runs all finished more than MESHHOOK_RETENTION_DAYS ago, and the audit rows older than
MESHHOOK_AUDIT_RETENTION_DAYS. Unset, nothing is pruned. Several workers prune side by side (SKIP LOCKED).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from datetime import UTC, datetime, timedelta

from app.db.engine import Database
from app.observability.metrics import PRUNED_ROWS
from app.retention.repository import RetentionRepository
from app.settings import Settings

log = logging.getLogger("meshhook.retention")

BATCH_PAUSE_S = 0.05  # between batches: other transactions get the rows' pages and the CPU back


class Pruner:
    def __init__(self, db: Database, settings: Settings):
        self.db = db
        self.settings = settings

    @property
    def enabled(self) -> bool:
        return self.settings.retention_days is not None or self.settings.audit_retention_days is not None

    async def run(self) -> None:
        """Prune forever (until cancelled); returns at once when no retention is configured."""
        if not self.enabled:
            return
        interval = self.settings.retention_interval_s
        await asyncio.sleep(random.uniform(0.1, min(interval, 5.0)))  # not all workers at once, not at boot
        while True:
            try:
                await self.prune_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the next pass tries again
                log.warning(
                    "pruning failed; retrying next pass", extra={"error": type(exc).__name__, "detail": str(exc)[:200]}
                )
            await asyncio.sleep(interval)

    async def prune_once(self, now: datetime | None = None) -> dict[str, int]:
        """One pass: batches until nothing old is left. Returns the rows deleted per table."""
        now = now or datetime.now(UTC)
        total = {"trees": 0, "runs": 0, "steps": 0, "events": 0, "audit": 0}
        started = time.monotonic()
        batch = self.settings.retention_batch
        if self.settings.retention_days is not None:
            before = now - timedelta(days=self.settings.retention_days)
            while True:
                async with self.db.service_scope() as tx:
                    got = await RetentionRepository(tx).prune_runs(before, batch)
                for k, v in got.items():
                    total[k] += v
                if got["trees"] < batch:
                    break
                await asyncio.sleep(BATCH_PAUSE_S)
        if self.settings.audit_retention_days is not None:
            before = now - timedelta(days=self.settings.audit_retention_days)
            while True:
                async with self.db.service_scope() as tx:
                    n = await RetentionRepository(tx).prune_audit(before, batch * 10)
                total["audit"] += n
                if n < batch * 10:
                    break
                await asyncio.sleep(BATCH_PAUSE_S)
        for table, key in (("runs", "runs"), ("step_runs", "steps"), ("run_events", "events"), ("audit_log", "audit")):
            if total[key]:
                PRUNED_ROWS.labels(table).inc(total[key])
        if any(total.values()):
            log.info("pruned", extra={**total, "seconds": round(time.monotonic() - started, 3)})
        return total
