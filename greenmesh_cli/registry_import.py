"""`greenmesh registry import FILE.csv`: stream a CSV of facilities to the registry's `ImportFacilities`.

The file is read twice, one row at a time: a quick first pass counts the rows (and finds a bad header or
encoding before anything is sent), the second parses each row and writes it to the client stream at
once. Neither side holds the whole file: the CLI keeps one row, the registry validates each row as it
arrives and stores them in chunks of 500, and in between gRPC's flow control buffers at most a few MB
(so the progress bar counts rows sent, and the registry may still be storing the last ones). Rows the
CLI cannot parse (a bad number, an unknown enum name) are not sent; they are reported with the
registry's rejections, by CSV line number.
"""

from __future__ import annotations

import asyncio
import csv
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TextIO

import grpc
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from greenmesh.registry.v1 import registry_pb2 as pb
from greenmesh.registry.v1 import registry_pb2_grpc
from greenmesh_cli.mesh_file import component_address, identity_refusal, local_caller_key
from meshkit.caller import PLATFORM_OPERATOR, Caller
from meshkit.grpc_options import CHANNEL_OPTIONS

# The local platform operator the CLI acts as (the same id the tests use for the platform).
LOCAL_OPERATOR_ID: Final = "00000000-0000-7000-8000-000000000001"
MAX_ERRORS_SHOWN: Final = 50
INT32_MAX: Final = 2**31 - 1

FACILITY_TYPES: Final = tuple(
    value.name.removeprefix("FACILITY_TYPE_")
    for value in pb.FacilityType.DESCRIPTOR.values
    if not value.name.endswith("_UNSPECIFIED")
)
RECYCLING_MODES: Final = tuple(
    value.name.removeprefix("RECYCLING_MODE_")
    for value in pb.RecyclingMode.DESCRIPTOR.values
    if not value.name.endswith("_UNSPECIFIED")
)
TRUE_WORDS: Final = frozenset({"true", "1", "yes", "是"})
FALSE_WORDS: Final = frozenset({"false", "0", "no", "否", ""})


@dataclass(frozen=True)
class CsvColumn:
    name: str
    required: bool
    meaning: str


COLUMNS: Final = (
    CsvColumn("operator_credit_code", True, "unified social credit code of the operator, a registered participant"),
    CsvColumn(
        "operator_facility_code", True, "the operator's own code for the site; with the operator, the import key"
    ),
    CsvColumn("name", True, "the site's name"),
    CsvColumn("facility_type", True, ", ".join(FACILITY_TYPES) + " (the FACILITY_TYPE_ prefix may be written)"),
    CsvColumn("county_code", True, "six-digit county-level GB/T 2260 code, e.g. 320102"),
    CsvColumn("latitude", True, "WGS-84 degrees, inside the county (convert GCJ-02 / BD-09 map coordinates first)"),
    CsvColumn("longitude", True, "WGS-84 degrees"),
    CsvColumn("address", False, "street address"),
    CsvColumn("opening_hours", False, "e.g. 09:00-18:00"),
    CsvColumn("phone", False, "digits, spaces, dashes, an optional leading +"),
    CsvColumn("recycling_modes", False, ";".join(RECYCLING_MODES) + ": any of them, separated by ;"),
    CsvColumn("max_stock_kg", False, "a number ≥ 0"),
    CsvColumn("max_stock_units", False, "a whole number ≥ 0"),
    CsvColumn("max_dwell_days", False, "a whole number; required (> 0) for sites that store waste batteries"),
    CsvColumn("fire_class", False, "GB 50016 fire hazard class of the storage, e.g. B"),
    CsvColumn("has_discharge_equipment", False, "true/false, 1/0, yes/no or 是/否; empty means false"),
    CsvColumn("has_monitoring", False, "true/false, 1/0, yes/no or 是/否; empty means false"),
)
COLUMN_NAMES: Final = tuple(column.name for column in COLUMNS)
REQUIRED_COLUMNS: Final = tuple(column.name for column in COLUMNS if column.required)

IMPORT_HELP: Final = (
    "Import facilities from a CSV file into the registry, streaming one row at a time.\n\n"
    "The file is UTF-8 (with or without the BOM Excel writes) and starts with a header row naming these "
    "columns, in any order ([bold]*[/bold] = required):\n\n"
    + "\n".join(f"- {c.name}{' [bold]*[/bold]' if c.required else ''}: {c.meaning}" for c in COLUMNS)
    + "\n\nRe-importing a file is safe: rows are matched on (operator, operator_facility_code), identical rows "
    "change nothing and changed rows update the facility. New facilities start in DRAFT. Each rejected row "
    "is reported with its line number in the file; --errors-csv writes all of them. Exit status: 0 when "
    "no row was rejected, 1 when some were, 2 when the file or the registry could not be used.\n\n"
    "The registry is --registry, else the running mesh's .greenmesh/mesh.json, else GREENMESH_REGISTRY_ADDR. "
    "The CLI calls it as the local platform operator (--as-participant, roles PLATFORM_OPERATOR), which a "
    "registry port on this machine accepts; the gateway (coming later) will require a credential instead."
)


class ImportProblem(Exception):
    """The file or the registry could not be used at all (exit status 2)."""


@dataclass(frozen=True, order=True)
class RowError:
    row: int
    field: str
    description: str


@dataclass
class ImportReport:
    rows_read: int = 0
    sent: int = 0
    received: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected_by_registry: int = 0
    rejected_locally: int = 0
    registry_errors: int = 0  # error lines the registry sent (it reports a bounded number of them)
    errors: list[RowError] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return self.rejected_locally + self.rejected_by_registry

    @property
    def unreported(self) -> int:
        """Rows the registry rejected without sending their error line (it reports a bounded number)."""
        return max(0, self.rejected_by_registry - self.registry_errors)


# ---- reading the file ------------------------------------------------------------------------------------


def _open(path: Path) -> TextIO:
    try:
        # utf-8-sig also reads plain UTF-8; newline="" lets the csv module handle quoted line breaks.
        return path.open(encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise ImportProblem(f"{path}: no such file") from None
    except OSError as error:
        raise ImportProblem(f"{path}: {error.strerror or error}") from None


def _header(reader: Iterator[list[str]], path: Path) -> list[str]:
    first = next(reader, None)
    if first is None:
        raise ImportProblem(f"{path}: the file is empty; it needs a header row: {','.join(COLUMN_NAMES)}")
    header = [name.strip().lower() for name in first]
    unknown = [name for name in header if name and name not in COLUMN_NAMES]
    if unknown:
        raise ImportProblem(
            f"{path}: unknown column(s) {', '.join(unknown)}; the columns are {', '.join(COLUMN_NAMES)}"
        )
    duplicated = sorted({name for name in header if name and header.count(name) > 1})
    if duplicated:
        raise ImportProblem(f"{path}: column(s) {', '.join(duplicated)} appear more than once")
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise ImportProblem(f"{path}: the header lacks the required column(s) {', '.join(missing)}")
    return header


Record = tuple[int, dict[str, str] | RowError]


def read_records(path: Path) -> Iterator[Record]:
    """(line number, {column: value}) per data row, or (line, RowError) for a row of the wrong shape.

    The line number is the file's line where the row starts (the header is line 1). Blank rows are skipped.
    Raises ImportProblem for a missing file, a bad header, bytes that are not UTF-8 or malformed CSV.
    """
    with _open(path) as handle:
        reader = csv.reader(handle, strict=True)
        line = 0
        try:
            header = _header(reader, path)
            last = reader.line_num
            for values in reader:
                line, last = last + 1, reader.line_num
                if not any(value.strip() for value in values):
                    continue  # blank lines, or Excel's ",,,,," rows
                if len(values) > len(header):
                    yield line, RowError(line, "(row)", f"{len(values)} values for {len(header)} columns")
                    continue
                record = {name: value.strip() for name, value in zip(header, values, strict=False) if name}
                yield line, record
        except UnicodeDecodeError as error:
            raise ImportProblem(
                f"{path}: not UTF-8 text (after line {line}: {error.reason}); save it as CSV UTF-8"
            ) from None
        except csv.Error as error:
            raise ImportProblem(f"{path}: malformed CSV at line {reader.line_num}: {error}") from None


def count_rows(path: Path) -> int:
    """The data rows of the file: a quick first pass that also checks the header and the encoding."""
    return sum(1 for _ in read_records(path))


# ---- one row -> one request ----------------------------------------------------------------------------


def _enum_value(text: str, prefix: str, names: tuple[str, ...]) -> str | None:
    name = text.strip().upper().removeprefix(prefix)
    return name if name in names else None


def _number(record: dict[str, str], column: str, errors: list[str], *, whole: bool = False) -> float:
    text = record.get(column, "")
    if not text:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        errors.append(f"{column}|{text!r} is not a number")
        return 0.0
    if not math.isfinite(value):
        errors.append(f"{column}|{text!r} is not a finite number")
    elif whole and (value != int(value) or abs(value) > INT32_MAX):
        errors.append(f"{column}|{text!r} is not a whole number up to {INT32_MAX:,}")
    return value if math.isfinite(value) else 0.0


def _flag(record: dict[str, str], column: str, errors: list[str]) -> bool:
    text = record.get(column, "").lower()
    if text in TRUE_WORDS:
        return True
    if text not in FALSE_WORDS:
        errors.append(f"{column}|{text!r} is not one of true/false, 1/0, yes/no, 是/否")
    return False


def parse_record(line: int, record: dict[str, str]) -> pb.ImportFacilitiesRequest | list[RowError]:
    """The request for one CSV row, or the row's errors. Only what the CLI can tell alone is checked here
    (numbers, enum names, required cells); the registry checks the rest (codes, county, location, limits)."""
    problems: list[str] = []
    for column in REQUIRED_COLUMNS:
        if not record.get(column):
            problems.append(f"{column}|required")
    facility_type = ""
    if record.get("facility_type"):
        found = _enum_value(record["facility_type"], "FACILITY_TYPE_", FACILITY_TYPES)
        if found is None:
            problems.append(
                f"facility_type|unknown type {record['facility_type']!r}; one of {', '.join(FACILITY_TYPES)}"
            )
        facility_type = found or ""
    modes: list[str] = []
    for part in record.get("recycling_modes", "").split(";"):
        if not part.strip():
            continue
        mode = _enum_value(part, "RECYCLING_MODE_", RECYCLING_MODES)
        if mode is None:
            problems.append(f"recycling_modes|unknown mode {part.strip()!r}; any of {', '.join(RECYCLING_MODES)}")
        else:
            modes.append(mode)
    latitude = _number(record, "latitude", problems)
    longitude = _number(record, "longitude", problems)
    max_stock_kg = _number(record, "max_stock_kg", problems)
    max_stock_units = _number(record, "max_stock_units", problems, whole=True)
    max_dwell_days = _number(record, "max_dwell_days", problems, whole=True)
    has_discharge_equipment = _flag(record, "has_discharge_equipment", problems)
    has_monitoring = _flag(record, "has_monitoring", problems)
    if problems:
        return [RowError(line, *problem.split("|", 1)) for problem in problems]
    return pb.ImportFacilitiesRequest(
        row_number=line,
        operator_credit_code=record["operator_credit_code"],
        facility=pb.Facility(
            operator_facility_code=record["operator_facility_code"],
            name=record["name"],
            facility_type=pb.FacilityType.Value("FACILITY_TYPE_" + facility_type),
            county_code=record["county_code"],
            location=pb.GeoPoint(latitude=latitude, longitude=longitude),
            address=record.get("address", ""),
            opening_hours=record.get("opening_hours", ""),
            phone=record.get("phone", ""),
            recycling_modes=[pb.RecyclingMode.Value("RECYCLING_MODE_" + mode) for mode in modes],
            storage_limits=pb.StorageLimits(
                max_stock_kg=max_stock_kg, max_stock_units=int(max_stock_units), max_dwell_days=int(max_dwell_days)
            ),
            safety=pb.SafetyAttributes(
                fire_class=record.get("fire_class", ""),
                has_discharge_equipment=has_discharge_equipment,
                has_monitoring=has_monitoring,
            ),
        ),
    )


# The registry names fields by their place in the request; report them by the CSV column to fix.
_REGISTRY_FIELDS: Final = {
    "facility.location": "latitude/longitude",
    "facility.operator_id": "operator_credit_code",
    "facility.storage_limits.max_stock_kg": "max_stock_kg",
    "facility.storage_limits.max_stock_units": "max_stock_units",
    "facility.storage_limits.max_dwell_days": "max_dwell_days",
    "facility.safety.fire_class": "fire_class",
}


def column_of(registry_field: str) -> str:
    """The CSV column a field path of the registry's report refers to."""
    if registry_field in _REGISTRY_FIELDS:
        return _REGISTRY_FIELDS[registry_field]
    return registry_field.removeprefix("facility.")


# ---- streaming -----------------------------------------------------------------------------------------


def operator_caller(participant_id: str = LOCAL_OPERATOR_ID) -> Caller:
    return Caller(participant_id=participant_id, roles=frozenset({PLATFORM_OPERATOR}))


async def import_file(
    path: Path,
    target: str,
    caller: Caller,
    *,
    key: bytes | None = None,
    on_row: Callable[[], None] | None = None,
    on_sent: Callable[[], None] | None = None,
    connect_timeout: float = 5.0,
) -> ImportReport:
    """Stream the rows of `path` to the registry at `target` (host:port) and merge its summary with the
    rows rejected here. `on_row` is called after each row is sent or rejected (for a progress bar),
    `on_sent` once the last row is sent (the registry may still be storing the rows gRPC buffered). The
    caller's identity is signed with `key`, by default the local mesh's (`local_caller_key`).

    Raises ImportProblem when the file cannot be read or the registry cannot be reached or fails the call.
    """
    report = ImportReport()
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        try:
            await asyncio.wait_for(channel.channel_ready(), connect_timeout)
        except TimeoutError:
            raise ImportProblem(f"no registry answers at {target} (waited {connect_timeout:g} s)") from None
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        metadata = caller.metadata(local_caller_key() if key is None else key)
        refusal = await identity_refusal(channel, metadata)
        if refusal is not None:
            raise ImportProblem(_rpc_failure(refusal, target, 0))
        call = stub.ImportFacilities(metadata=metadata)
        try:
            for line, record in read_records(path):
                report.rows_read += 1
                parsed = record if isinstance(record, RowError) else parse_record(line, record)
                if isinstance(parsed, pb.ImportFacilitiesRequest):
                    await call.write(parsed)  # waits while the registry is behind: flow control
                    report.sent += 1
                else:
                    report.rejected_locally += 1
                    report.errors.extend(parsed if isinstance(parsed, list) else [parsed])
                if on_row is not None:
                    on_row()
            await call.done_writing()
            if on_sent is not None:
                on_sent()
            summary: pb.ImportFacilitiesResponse = await call
        except grpc.aio.AioRpcError as error:
            raise ImportProblem(_rpc_failure(error, target, report.sent)) from None
        except BaseException:
            call.cancel()
            raise
    report.received = summary.rows_received
    report.created = summary.created
    report.updated = summary.updated
    report.unchanged = summary.unchanged
    report.rejected_by_registry = summary.rejected
    report.registry_errors = len(summary.errors)
    report.errors.extend(RowError(e.row_number, column_of(e.field), e.description) for e in summary.errors)
    report.errors.sort()
    return report


def _rpc_failure(error: grpc.aio.AioRpcError, target: str, sent: int) -> str:
    code = error.code()
    detail = error.details() or code.name
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        where = f"the registry at {target} went away"
    else:
        where = f"the registry at {target} refused the import ({code.name})"
    return (
        f"{where} after {sent:,} rows were sent: {detail}. Chunks it had already stored stay stored; "
        "importing the file again is safe (unchanged rows are skipped)."
    )


# ---- the command ---------------------------------------------------------------------------------------


def write_errors_csv(path: Path, errors: list[RowError]) -> None:
    # With a BOM, so Excel opens the Chinese descriptions correctly.
    with path.open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "field", "description"])
        writer.writerows((error.row, error.field, error.description) for error in errors)


def summary_table(report: ImportReport) -> Table:
    table = Table(title="Import summary")
    table.add_column("rows")
    table.add_column("count", justify="right")
    table.add_row("in the file", f"{report.rows_read:,}")
    table.add_row("received by the registry", f"{report.received:,}")
    table.add_row("[green]created[/green]", f"{report.created:,}")
    table.add_row("[cyan]updated[/cyan]", f"{report.updated:,}")
    table.add_row("unchanged", f"{report.unchanged:,}")
    rejected = f"{report.rejected:,}"
    if report.rejected_locally:
        rejected += f" ({report.rejected_locally:,} by the CLI)"
    table.add_row("[red]rejected[/red]" if report.rejected else "rejected", rejected)
    return table


def error_table(errors: list[RowError], limit: int = MAX_ERRORS_SHOWN) -> Table:
    table = Table(title=f"Rejected rows (first {min(limit, len(errors))} of {len(errors):,} errors)")
    table.add_column("row", justify="right")
    table.add_column("field")
    table.add_column("description", overflow="fold")
    for error in errors[:limit]:
        table.add_row(str(error.row), error.field, error.description)
    return table


def run_import_command(
    file: Path,
    registry: str | None,
    as_participant: str,
    errors_csv: Path | None,
    connect_timeout: float,
    console: Console,
) -> int:
    """What `greenmesh registry import` does; returns the exit status."""
    from meshkit.ids import is_uuid

    if not is_uuid(as_participant):
        console.print(f"[red]--as-participant {as_participant!r} is not a participant id (a UUID)[/red]")
        return 2
    if registry is None:
        registry, source = component_address("registry")
    else:
        source = "--registry"
    try:
        total = count_rows(file)
        console.print(f"{file}: {total:,} rows; importing into the registry at {registry} (from {source})")
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
                    registry,
                    operator_caller(as_participant),
                    on_row=lambda: progress.advance(task),
                    # gRPC's flow control lets a few MB of rows run ahead of what the registry has stored.
                    on_sent=lambda: progress.update(task, description="sent; the registry is storing them"),
                    connect_timeout=connect_timeout,
                )
            )
    except ImportProblem as problem:
        console.print(f"[red]greenmesh registry import: {problem}[/red]")
        return 2
    console.print(summary_table(report))
    if report.errors:
        console.print(error_table(report.errors))
        if len(report.errors) > MAX_ERRORS_SHOWN and errors_csv is None:
            console.print(f"… {len(report.errors) - MAX_ERRORS_SHOWN:,} more: use --errors-csv PATH to write them all")
    if report.unreported:
        console.print(
            f"{report.unreported:,} more rows were rejected without an error line: the registry reports the "
            f"first {report.registry_errors:,} per import; fix those and import again to see the rest"
        )
    if errors_csv is not None:
        try:
            write_errors_csv(errors_csv, report.errors)
        except OSError as error:
            console.print(f"[red]could not write {errors_csv}: {error.strerror or error}[/red]")
            return 2
        console.print(f"{len(report.errors):,} errors written to {errors_csv}")
    console.print(
        f"{report.rows_read:,} rows: {report.created:,} created, {report.updated:,} updated, "
        f"{report.unchanged:,} unchanged, {report.rejected:,} rejected"
    )
    return 1 if report.rejected else 0
