"""The single writer of battery state: every capture, error declaration and quarantine release runs here, one
at a time, and concurrent single-event reports are committed together (group commit).

Why one at a time: a capture reads the batteries' states, judges the events against them and writes the next
states. Two captures of the same battery side by side would both judge against the old state and the later
commit would silently overwrite the earlier one (PostgreSQL), or fail at commit with "database is locked"
(SQLite, whose WAL snapshot a concurrent writer made stale). So, in this process, an :class:`asyncio.Lock`
orders the writers; across replicas of one province on PostgreSQL, each writing transaction also takes a
transaction-scoped advisory lock (:data:`CAPTURE_LOCK_KEY`).

Why group commit: with one writer, unary ``ReportEvent`` calls would each pay a whole transaction (a commit,
a dozen statements) in turn. Instead, the reports that arrive while a transaction runs wait in a queue, and
the next transaction captures all of them (up to :data:`MAX_GROUP`) as one batch with PROCEED semantics: for
single-event calls this is exactly what separate calls would give (an event rejected or in conflict stores
nothing of itself and does not affect the others; a later event of the group sees the state an earlier one
left, as it would have after that call returned). If the group's transaction fails for an unexpected reason,
each report is retried alone, so one bad report cannot fail the others. A PROCEED batch (``ReportEvents`` with
PROCEED, upload chunks) joins the group as one report whose events stay together and in order: PROCEED already
judges each event on its own, so sharing the transaction changes no answer, and a province whose reporters send
small batches no longer pays a transaction per batch. A ROLLBACK batch keeps a transaction of its own, so it stays
all-or-nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from sqlmodel import func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from greenmesh.flows.v1 import flows_pb2 as pb
from meshkit.db import Database
from meshkit.server import ServiceRuntime
from services.flows import capture
from services.flows.domain import Directory, RuleConfig

log = logging.getLogger(__name__)

CAPTURE_LOCK_KEY: Final = 0x67726D636170  # "grmcap": one battery-state writer at a time across replicas
MAX_GROUP: Final = capture.MAX_BATCH
"""The most events one group transaction captures (a larger PROCEED batch still goes alone, in one)."""


@dataclass
class _Report:
    """One call's events (one for ReportEvent, a PROCEED batch's for the others), captured together and in order."""

    messages: Sequence[pb.FlowEvent]
    reporter_id: str
    directory: Directory
    future: asyncio.Future[list[capture.Judged]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass
class CaptureQueue:
    runtime: ServiceRuntime
    config: RuleConfig
    on_stored: Callable[[], Awaitable[None]]  # wakes subscriptions when something was stored
    max_group: int = MAX_GROUP
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _waiting: list[_Report] = field(default_factory=list)
    _worker: asyncio.Task[None] | None = None
    groups: int = 0  # group transactions (unary reports and PROCEED batches); observable in tests

    @property
    def database(self) -> Database:
        return self.runtime.database

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[AsyncSession]:
        """A transaction in which nothing else writes battery state (this process and, on PostgreSQL, every
        replica); committed on success, rolled back on any error."""
        async with self._lock, self.database.transaction() as session:
            if self.database.is_postgres:
                await session.exec(select(func.pg_advisory_xact_lock(CAPTURE_LOCK_KEY)))
            yield session

    async def report_batch(
        self, directory: Directory, messages: Sequence[pb.FlowEvent], reporter_id: str, *, rollback_on_error: bool
    ) -> capture.BatchResult:
        """One batch from one reporter: a ROLLBACK batch in its own transaction, a PROCEED batch in the next group."""
        if rollback_on_error:
            return await self._capture(directory, messages, [reporter_id] * len(messages), rollback_on_error=True)
        judged = await self._enqueue(_Report(messages, reporter_id, directory))
        return capture.BatchResult(judged, rolled_back=False, critical_rejections=[])

    async def report_one(self, directory: Directory, message: pb.FlowEvent, reporter_id: str) -> capture.Judged:
        """One event, committed with whatever other reports are waiting; returns its judgement."""
        (judged,) = await self._enqueue(_Report([message], reporter_id, directory))
        return judged

    async def _enqueue(self, report: _Report) -> list[capture.Judged]:
        self._waiting.append(report)
        if self._worker is None or self._worker.done():
            # A task of its own, so a caller that goes away (a cancelled RPC) never cancels others' writes.
            self._worker = asyncio.create_task(self._drain(), name="flows-capture-group")
        return await asyncio.shield(report.future)

    def _next_group(self) -> list[_Report]:
        """The waiting reports, in arrival order, up to `max_group` events (always at least one report)."""
        taken, events = 0, 0
        for report in self._waiting:
            if taken and events + len(report.messages) > self.max_group:
                break
            taken += 1
            events += len(report.messages)
        group, self._waiting = self._waiting[:taken], self._waiting[taken:]
        return group

    async def _drain(self) -> None:
        while self._waiting:
            group = self._next_group()
            try:
                await self._capture_group(group)
            except Exception as exc:  # one transaction for the group failed: try each report alone
                if len(group) == 1:
                    _settle_error(group[0], exc)
                    continue
                log.warning("a group of %d reports failed (%s); capturing them one by one", len(group), exc)
                for report in group:
                    try:
                        await self._capture_group([report])
                    except Exception as single_exc:
                        _settle_error(report, single_exc)

    async def _capture_group(self, group: Sequence[_Report]) -> None:
        # The directory is the same view for every report of a process; take the latest caller's.
        result = await self._capture(
            group[-1].directory,
            [message for report in group for message in report.messages],
            [report.reporter_id for report in group for _ in report.messages],
            rollback_on_error=False,
        )
        self.groups += 1
        start = 0
        for report in group:
            end = start + len(report.messages)
            if not report.future.done():
                report.future.set_result(result.judged[start:end])
            start = end

    async def _capture(
        self,
        directory: Directory,
        messages: Sequence[pb.FlowEvent],
        reporter_ids: Sequence[str],
        rollback_on_error: bool,
    ) -> capture.BatchResult:
        now = dt.datetime.now(dt.UTC)
        settings = self.runtime.settings
        async with self.exclusive() as session:
            result = await capture.capture_batch(
                session,
                settings,
                directory,
                self.config,
                messages,
                reporter_ids,
                rollback_on_error=rollback_on_error,
                now=now,
            )
        if result.critical_rejections:
            async with self.database.transaction() as session:
                await capture.record_critical_rejections(session, settings, result.critical_rejections, now)
        if any(j.stored for j in result.judged):
            await self.on_stored()
        return result


def _settle_error(report: _Report, exc: Exception) -> None:
    if not report.future.done():
        report.future.set_exception(exc)
