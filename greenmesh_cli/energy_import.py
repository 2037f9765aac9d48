"""`greenmesh energy import-readings FILE.csv`: stream a CSV of meter readings (and of independent series' values)
to the energy service's `UploadReadings`.

The file is read twice, one row at a time: a first pass counts the rows (and finds a bad header or encoding before
anything is sent); the second parses each row and gathers consecutive rows of one meter (or one independent
series) into batches of up to 5,000 readings, each written to the client stream at once. The service judges and
stores each batch in its own transaction (a refused batch stores nothing; the others are stored); the summary names
refused batches by their readings, which the CLI maps back to CSV line numbers. Re-importing a file changes
nothing: readings are upserted on (meter or series, start, end).
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TextIO

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from greenmesh.energy.v1 import energy_pb2 as pb
from greenmesh.energy.v1 import energy_pb2_grpc
from greenmesh_cli.mesh_file import component_address, identity_refusal, local_caller_key
from greenmesh_cli.registry_import import LOCAL_OPERATOR_ID, operator_caller
from meshkit.caller import Caller
from meshkit.grpc_options import CHANNEL_OPTIONS

BATCH: Final = 5_000
MAX_ERRORS_SHOWN: Final = 50
COLUMNS: Final = ("meter_id", "series_id", "start", "end", "value", "estimated")
REQUIRED: Final = ("start", "end", "value")
TRUE_WORDS: Final = frozenset({"true", "1", "yes", "是"})
FALSE_WORDS: Final = frozenset({"false", "0", "no", "否", ""})
_READING_FIELD = re.compile(r"^readings\[(\d+)\](?:\.(\w+))?$")

IMPORT_HELP: Final = (
    "Import meter readings (and independent series' values) from a CSV file into the energy service, streaming "
    "them in batches.\n\n"
    "The file is UTF-8 (a BOM is fine) with a header row naming these columns, in any order:\n\n"
    "- meter_id: the meter (required unless --meter is given), or\n"
    "- series_id: an independent series (outdoor temperature, traffic…): the row is one of its values\n"
    "- start [bold]*[/bold], end [bold]*[/bold]: the interval, ISO 8601 such as 2026-01-01T00:15:00+08:00 "
    "(whole seconds; without an offset the --timezone applies)\n"
    "- value [bold]*[/bold]: in the meter's (or series') unit\n"
    "- estimated: true/false, 1/0, yes/no or 是/否; empty means false\n\n"
    "Consecutive rows of one meter or series travel in batches of up to 5,000; the service stores each batch in one "
    "transaction, so a batch with a bad row (an overlap, a negative energy, a wrong interval length) is refused "
    "whole and reported by CSV line, and the others are stored. Re-importing a file is safe: readings are upserted "
    "on (meter or series, start, end) and identical ones change nothing. Exit status: 0 when nothing was refused, "
    "1 when some rows were, 2 when the file or the service could not be used.\n\n"
    "The service is --energy, else the running mesh's .greenmesh/mesh.json, else GREENMESH_ENERGY_ADDR; the CLI "
    "calls it as the local platform operator (--as-participant)."
)


class ImportProblem(Exception):
    """The file or the service could not be used at all (exit status 2)."""


@dataclass(frozen=True, order=True)
class RowError:
    row: int
    field: str
    description: str


@dataclass
class ImportReport:
    rows_read: int = 0
    sent: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    flagged: int = 0
    rejected_by_service: int = 0
    rejected_locally: int = 0
    errors: list[RowError] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return self.rejected_locally + self.rejected_by_service


def _open(path: Path) -> TextIO:
    try:
        return path.open(encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise ImportProblem(f"{path}: no such file") from None
    except OSError as error:
        raise ImportProblem(f"{path}: {error.strerror or error}") from None


def read_records(path: Path, *, meter_given: bool) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, {column: value}) per data row; blank rows skipped; ImportProblem for a bad file."""
    with _open(path) as handle:
        reader = csv.reader(handle, strict=True)
        try:
            first = next(reader, None)
            if first is None:
                raise ImportProblem(f"{path}: the file is empty; it needs a header row: {','.join(COLUMNS)}")
            header = [name.strip().lower() for name in first]
            unknown = [name for name in header if name and name not in COLUMNS]
            if unknown:
                raise ImportProblem(
                    f"{path}: unknown column(s) {', '.join(unknown)}; the columns are {', '.join(COLUMNS)}"
                )
            wanted = [*REQUIRED, *([] if meter_given or "series_id" in header else ["meter_id"])]
            missing = [name for name in wanted if name not in header]
            if missing:
                raise ImportProblem(f"{path}: the header lacks the required column(s) {', '.join(missing)}")
            last = reader.line_num
            for values in reader:
                line, last = last + 1, reader.line_num
                if any(value.strip() for value in values):
                    yield line, {name: value.strip() for name, value in zip(header, values, strict=False) if name}
        except UnicodeDecodeError as error:
            raise ImportProblem(f"{path}: not UTF-8 text ({error.reason}); save it as CSV UTF-8") from None
        except csv.Error as error:
            raise ImportProblem(f"{path}: malformed CSV at line {reader.line_num}: {error}") from None


def count_rows(path: Path, *, meter_given: bool) -> int:
    return sum(1 for _ in read_records(path, meter_given=meter_given))


def _moment(text: str, column: str, zone: dt.tzinfo, errors: list[str]) -> Timestamp | None:
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        errors.append(f"{column}|{text!r} is not an ISO 8601 time such as 2026-01-01T00:15:00+08:00")
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    if moment.microsecond:
        errors.append(f"{column}|{text!r}: whole seconds only")
        return None
    return Timestamp(seconds=int(moment.timestamp()))


Owner = tuple[str, str]
"""("meter_id" or "series_id", the id): what a row's value belongs to."""


def parse_record(
    line: int, record: dict[str, str], meter: str | None, zone: dt.tzinfo
) -> tuple[Owner, pb.Reading] | list[RowError]:
    """(owner, reading) of one row, or its errors."""
    problems: list[str] = []
    series_id = record.get("series_id", "")
    meter_id = record.get("meter_id") or ("" if series_id else meter or "")
    owner: Owner = ("series_id", series_id) if series_id else ("meter_id", meter_id)
    if meter_id and series_id:
        problems.append("series_id|a row names a meter_id or a series_id, not both")
    elif not meter_id and not series_id:
        problems.append("meter_id|required (or series_id, or --meter)")
    for column in REQUIRED:
        if not record.get(column):
            problems.append(f"{column}|required")
    start = _moment(record["start"], "start", zone, problems) if record.get("start") else None
    end = _moment(record["end"], "end", zone, problems) if record.get("end") else None
    value = 0.0
    if record.get("value"):
        try:
            value = float(record["value"])
            if not math.isfinite(value):
                problems.append(f"value|{record['value']!r} is not a finite number")
        except ValueError:
            problems.append(f"value|{record['value']!r} is not a number")
    estimated_text = record.get("estimated", "").lower()
    if estimated_text not in TRUE_WORDS | FALSE_WORDS:
        problems.append(f"estimated|{estimated_text!r} is not one of true/false, 1/0, yes/no, 是/否")
    if problems or start is None or end is None:
        return [RowError(line, *problem.split("|", 1)) for problem in problems]
    return owner, pb.Reading(start_time=start, end_time=end, value=value, estimated=estimated_text in TRUE_WORDS)


async def import_file(
    path: Path,
    target: str,
    caller: Caller,
    *,
    key: bytes | None = None,
    meter: str | None = None,
    zone: dt.tzinfo = dt.timezone(dt.timedelta(hours=8)),
    on_row: Callable[[], None] | None = None,
    connect_timeout: float = 5.0,
) -> ImportReport:
    """Stream the rows of `path` to the energy service at `target` (host:port) in batches of one meter, as
    `caller` signed with `key` (by default the local mesh's, `local_caller_key`)."""
    report = ImportReport()
    lines_of: list[list[int]] = []  # CSV lines of each message sent, by message index
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        try:
            await asyncio.wait_for(channel.channel_ready(), connect_timeout)
        except TimeoutError:
            raise ImportProblem(f"no energy service answers at {target} (waited {connect_timeout:g} s)") from None
        metadata = caller.metadata(local_caller_key() if key is None else key)
        refusal = await identity_refusal(channel, metadata)
        if refusal is not None:
            raise ImportProblem(_upload_failure(refusal, target, 0))
        call = energy_pb2_grpc.EnergyServiceStub(channel).UploadReadings(metadata=metadata)
        pending = pb.UploadReadingsRequest()
        pending_owner: Owner | None = None
        lines: list[int] = []

        async def flush() -> None:
            nonlocal pending, lines
            if lines:
                await call.write(pending)  # waits while the service is behind: flow control
                report.sent += len(lines)
                lines_of.append(lines)
            pending, lines = pb.UploadReadingsRequest(), []

        try:
            for line, record in read_records(path, meter_given=meter is not None):
                report.rows_read += 1
                parsed = parse_record(line, record, meter, zone)
                if isinstance(parsed, list):
                    report.rejected_locally += 1
                    report.errors.extend(parsed)
                else:
                    owner, reading = parsed
                    if lines and (pending_owner != owner or len(lines) >= BATCH):
                        await flush()
                    pending_owner = owner
                    setattr(pending, owner[0], owner[1])
                    pending.readings.append(reading)
                    lines.append(line)
                if on_row is not None:
                    on_row()
            await flush()
            await call.done_writing()
            summary: pb.UploadReadingsResponse = await call
        except grpc.aio.AioRpcError as error:
            raise ImportProblem(_upload_failure(error, target, report.sent)) from None
        except BaseException:
            call.cancel()
            raise
    report.inserted, report.updated = summary.inserted, summary.updated
    report.unchanged, report.flagged = summary.unchanged, summary.flagged
    report.rejected_by_service = summary.rejected
    for problem in summary.problems:
        batch_lines = lines_of[problem.message_index]
        named = False
        for violation in problem.field_problems:
            found = _READING_FIELD.match(violation.field)
            if found and int(found.group(1)) < len(batch_lines):
                column = {"start_time": "start", "end_time": "end"}.get(found.group(2) or "", found.group(2) or "(row)")
                report.errors.append(RowError(batch_lines[int(found.group(1))], column, violation.description))
                named = True
            elif violation.field in ("meter_id", "series_id"):
                report.errors.append(RowError(batch_lines[0], violation.field, violation.description))
                named = True
        if not named:
            report.errors.append(RowError(batch_lines[0], "(batch)", f"{problem.code}: {problem.message}"))
        report.errors.append(
            RowError(batch_lines[0], "(batch)", f"rows {batch_lines[0]}-{batch_lines[-1]} were not stored")
        )
    report.errors.sort()
    return report


def run_import_command(
    file: Path,
    energy: str | None,
    meter: str | None,
    timezone: str,
    as_participant: str,
    connect_timeout: float,
    console: Console,
) -> int:
    """What `greenmesh energy import-readings` does; returns the exit status."""
    from meshkit.ids import is_uuid

    if not is_uuid(as_participant):
        console.print(f"[red]--as-participant {as_participant!r} is not a participant id (a UUID)[/red]")
        return 2
    try:
        offset = dt.datetime.fromisoformat(f"2000-01-01T00:00:00{timezone}").tzinfo
    except ValueError:
        offset = None
    if offset is None:
        console.print(f"[red]--timezone {timezone!r} is not a UTC offset such as +08:00[/red]")
        return 2
    energy, source = (energy, "--energy") if energy else component_address("energy")
    try:
        total = count_rows(file, meter_given=meter is not None)
        console.print(f"{file}: {total:,} rows; importing into the energy service at {energy} (from {source})")
        with Progress(
            SpinnerColumn(),
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows"),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("sending", total=total)
            report = asyncio.run(
                import_file(
                    file,
                    energy,
                    operator_caller(as_participant),
                    meter=meter,
                    zone=offset,
                    on_row=lambda: progress.advance(task),
                    connect_timeout=connect_timeout,
                )
            )
    except ImportProblem as problem:
        console.print(f"[red]greenmesh energy import-readings: {problem}[/red]")
        return 2
    if report.errors:
        table = Table(
            title=f"Refused rows (first {min(MAX_ERRORS_SHOWN, len(report.errors))} of {len(report.errors):,})"
        )
        table.add_column("row", justify="right")
        table.add_column("field")
        table.add_column("description", overflow="fold")
        for error in report.errors[:MAX_ERRORS_SHOWN]:
            table.add_row(str(error.row), error.field, error.description)
        console.print(table)
    console.print(
        f"{report.rows_read:,} rows: {report.inserted:,} inserted, {report.updated:,} updated, "
        f"{report.unchanged:,} unchanged, {report.flagged:,} flagged, {report.rejected:,} rejected"
    )
    return 1 if report.rejected else 0


__all__ = ["IMPORT_HELP", "LOCAL_OPERATOR_ID", "import_file", "run_import_command"]


def _upload_failure(error: grpc.aio.AioRpcError, target: str, sent: int) -> str:
    detail = error.details() or error.code().name
    return (
        f"the energy service at {target} failed the upload ({error.code().name}) after {sent:,} rows "
        f"were sent: {detail}. Batches it had stored stay stored; importing again is safe."
    )
