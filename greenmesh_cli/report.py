"""`greenmesh report dispatch`: the ministry's periodic dispatch statistics (定期调度) of a division and a
period, from the flows service's `GetDispatchStatistics`: a table on the terminal, and the figures as JSON
and/or CSV files.

Days are local dates in China (Asia/Shanghai, +08:00, no daylight saving): `--from 2026-10-01 --to
2026-11-01` is the period [2026-10-01T00:00+08:00, 2026-11-01T00:00+08:00), that is the whole of October.
The CSV is UTF-8 with a BOM (Excel then reads the Chinese labels correctly), one row per figure, with the
division and the period's first and last day on every row, so the reports of several divisions or months can
be pasted into one sheet and filtered.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc
from rich.console import Console
from rich.table import Table

from greenmesh.flows.v1 import flows_pb2 as pb
from greenmesh.flows.v1 import flows_pb2_grpc
from greenmesh_cli.mesh_file import component_address, local_caller_key
from greenmesh_cli.registry_import import LOCAL_OPERATOR_ID, operator_caller
from meshkit.caller import Caller
from meshkit.grpc_options import CHANNEL_OPTIONS
from meshkit.provinces import PROVINCES

CHINA_TIME: Final = dt.timezone(dt.timedelta(hours=8), "+08:00")
FORMATS: Final = ("json", "csv", "both")
CALL_TIMEOUT_SECONDS: Final = 60.0

DISPATCH_HELP: Final = (
    "The ministry's periodic dispatch statistics (定期调度) of a division for a period, from the flows service.\n\n"
    "--division is a GB/T 2260 code: 2 digits for a province (32), 4 for a prefecture (3201), 6 for a county "
    "(320102), or 00 for the whole country (ask the national view: --flows national:50054). --from is the first "
    "day of the period and --to the day after its last (both YYYY-MM-DD, local "
    "dates in China, +08:00): October 2026 is --from 2026-10-01 --to 2026-11-01. A period is at most 400 days.\n\n"
    "Prints the figures and writes them as JSON and/or CSV (--format json, csv or both, the default) to "
    "--output (for both: its .json and .csv siblings); without --output, to "
    "dispatch-<division>-<first day>-<last day>.json/.csv here. The CSV (UTF-8 with a BOM, for Excel) has one "
    "row per figure: division, period, section, item, Chinese label, batteries, kilograms, value.\n\n"
    "The flows service is --flows, else the running mesh's .greenmesh/mesh.json, else GREENMESH_FLOWS_ADDR; "
    "the CLI calls it as the local platform operator. Exit status 0 when the report was written, 2 when the "
    "arguments are wrong or the service cannot be reached or refuses."
)

# Chinese labels of the figures, for the CSV's label_zh column and the table.
MODE_LABELS: Final = {
    "TRADE_IN": "以旧换新回收量",
    "DOOR_TO_DOOR": "预约上门回收量",
    "INTERNET": "互联网回收量",
    "DROP_OFF": "定点交投回收量",
    "COOP_STATION": "供销社回收站点回收量",
    "FLEET_RETURN": "租赁共享配送车队交回量",
    "UNSPECIFIED": "未注明回收方式的回收量",
}
ALERT_LABELS: Final = {
    "OVERDUE_STORAGE": "超期贮存预警",
    "POSSIBLE_DIVERSION": "疑似流失预警",
    "OVERSTOCK": "超量贮存预警",
    "MASS_BALANCE": "物料平衡异常预警",
    "RULE_HIT": "规则命中预警",
    "UNSPECIFIED": "其他预警",
}
CSV_HEADER: Final = (
    "division_code",
    "period_first_day",
    "period_last_day",
    "section",
    "item",
    "label_zh",
    "batteries",
    "kilograms",
    "value",
)


class ReportProblem(Exception):
    """The arguments are wrong, or the flows service could not be reached or refused (exit status 2)."""


# ---- the request ---------------------------------------------------------------------------------------


def parse_day(text: str, option: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError:
        raise ReportProblem(f"{option} {text!r} is not a date; write it as YYYY-MM-DD, e.g. 2026-10-01") from None


def local_midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=CHINA_TIME)


_OPTION_OF_FIELD: Final = {"division_code": "--division", "period_start": "--from", "period_end": "--to"}


def dispatch_request(division: str, first_day: dt.date, end_day: dt.date) -> pb.GetDispatchStatisticsRequest:
    """The request for [first_day, end_day) in local time, checked as the service checks it."""
    from services.flows.statistics import statistics_violations

    request = pb.GetDispatchStatisticsRequest(division_code=division.strip())
    request.period_start.FromDatetime(local_midnight(first_day))
    request.period_end.FromDatetime(local_midnight(end_day))
    problems = statistics_violations(request)
    if problems:
        raise ReportProblem(
            "; ".join(f"{_OPTION_OF_FIELD.get(p.field, p.field)}: {p.description}" for p in problems).replace(
                "period_start", "--from"
            )
        )
    return request


# ---- calling the flows service -------------------------------------------------------------------------


async def fetch_dispatch_statistics(
    target: str,
    request: pb.GetDispatchStatisticsRequest,
    caller: Caller,
    *,
    key: bytes | None = None,
    connect_timeout: float = 5.0,
) -> pb.GetDispatchStatisticsResponse:
    """Call GetDispatchStatistics at `target` as `caller`, signed with `key` (by default the local mesh's,
    `local_caller_key`); ReportProblem (one line) when that fails."""
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        try:
            await asyncio.wait_for(channel.channel_ready(), connect_timeout)
        except TimeoutError:
            raise ReportProblem(f"no flows service answers at {target} (waited {connect_timeout:g} s)") from None
        stub = flows_pb2_grpc.FlowServiceStub(channel)
        try:
            response: pb.GetDispatchStatisticsResponse = await stub.GetDispatchStatistics(
                request,
                metadata=caller.metadata(local_caller_key() if key is None else key),
                timeout=CALL_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            raise ReportProblem(_rpc_failure(error, target)) from None
    return response


def _rpc_failure(error: grpc.aio.AioRpcError, target: str) -> str:
    code = error.code()
    detail = (error.details() or code.name).replace("\n", " ")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return f"the flows service at {target} did not answer ({code.name}): {detail}"
    if code is grpc.StatusCode.UNIMPLEMENTED:
        return f"the service at {target} does not serve GetDispatchStatistics (is it the flows service?)"
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return f"the flows service at {target} refused the request ({code.name}): {detail}"
    return f"the flows service at {target} failed ({code.name}): {detail}"


# ---- the report ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DispatchReport:
    """The response with its period in local time, and where it came from."""

    response: pb.GetDispatchStatisticsResponse
    source: str

    @property
    def division(self) -> str:
        return self.response.division_code

    @property
    def start(self) -> dt.datetime:
        return self.response.period_start.ToDatetime(tzinfo=dt.UTC).astimezone(CHINA_TIME)

    @property
    def end(self) -> dt.datetime:
        return self.response.period_end.ToDatetime(tzinfo=dt.UTC).astimezone(CHINA_TIME)

    @property
    def first_day(self) -> dt.date:
        return self.start.date()

    @property
    def last_day(self) -> dt.date:
        """The last local day the period touches (the end is exclusive)."""
        return (self.end - dt.timedelta(microseconds=1)).date()

    @property
    def division_name(self) -> str:
        if not self.division.strip("0"):
            return "全国"  # 00: the whole country (the national view)
        return PROVINCES.get(self.division[:2], "") if len(self.division.rstrip("0")) <= 2 else ""


def mode_name(mode: int) -> str:
    return pb.CollectionMode.Name(mode).removeprefix("COLLECTION_MODE_")  # type: ignore[arg-type]


def alert_kind_name(kind: int) -> str:
    return pb.AlertKind.Name(kind).removeprefix("ALERT_KIND_")  # type: ignore[arg-type]


def report_json(report: DispatchReport) -> dict[str, Any]:
    r = report.response
    return {
        "report": "dispatch_statistics",
        "division_code": report.division,
        "period": {
            "start": report.start.isoformat(),
            "end": report.end.isoformat(),
            "first_day": report.first_day.isoformat(),
            "last_day": report.last_day.isoformat(),
        },
        "collected": {
            "by_mode": [
                {"mode": mode_name(m.mode), "batteries": m.batteries, "kilograms": m.kilograms}
                for m in r.collected_by_mode
            ],
            "batteries": r.collected_batteries,
            "kilograms": r.collected_kilograms,
        },
        "delivered_to_recyclers": {
            "batteries": r.delivered_to_recyclers_batteries,
            "kilograms": r.delivered_to_recyclers_kilograms,
        },
        "recycled": {"batteries": r.recycled_batteries, "kilograms": r.recycled_kilograms},
        # A share (0.5 = 50 %); 0 when nothing identified was collected in the period.
        "compliant_channel_rate": r.compliant_channel_rate,
        # The rate's parts: identified batteries first collected in the period and division, and those of them that
        # reached a listed recycler (add these up across divisions, never the rates).
        "compliant_channel": {"collected": r.rate_denominator, "reached_recycler": r.rate_reached_recycler},
        "open_alerts": {alert_kind_name(a.kind): a.open for a in r.open_alerts},
        "late_reports": r.late_reports,
        "source": report.source,
    }


@dataclass(frozen=True)
class Figure:
    section: str
    item: str
    label: str
    batteries: int | None = None
    kilograms: float | None = None
    value: str = ""


def figures(report: DispatchReport) -> Iterator[Figure]:
    """The report as rows: the CSV's and the terminal table's."""
    r = report.response
    for m in r.collected_by_mode:
        name = mode_name(m.mode)
        yield Figure("collected", name, MODE_LABELS.get(name, name), m.batteries, m.kilograms)
    yield Figure("collected", "TOTAL", "回收量合计", r.collected_batteries, r.collected_kilograms)
    yield Figure(
        "delivered_to_recyclers",
        "TOTAL",
        "交付拆解、再生利用企业量",
        r.delivered_to_recyclers_batteries,
        r.delivered_to_recyclers_kilograms,
    )
    yield Figure("recycled", "TOTAL", "再生利用量", r.recycled_batteries, r.recycled_kilograms)
    yield Figure(
        "compliant_channel_rate", "PERCENT", "规范渠道回收率(%)", value=f"{r.compliant_channel_rate * 100:.2f}"
    )
    yield Figure("compliant_channel_rate", "COLLECTED", "可追溯回收电池数", r.rate_denominator)
    yield Figure("compliant_channel_rate", "REACHED_RECYCLER", "其中进入规范企业数", r.rate_reached_recycler)
    for a in r.open_alerts:
        kind = alert_kind_name(a.kind)
        yield Figure("open_alerts", kind, "未关闭" + ALERT_LABELS.get(kind, kind), value=str(a.open))
    yield Figure("late_reports", "EVENTS", "迟报事件数", value=str(r.late_reports))


def _kg(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def write_csv(path: Path, report: DispatchReport) -> None:
    with path.open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_HEADER)
        for f in figures(report):
            writer.writerow(
                (
                    report.division,
                    report.first_day.isoformat(),
                    report.last_day.isoformat(),
                    f.section,
                    f.item,
                    f.label,
                    "" if f.batteries is None else str(f.batteries),
                    _kg(f.kilograms),
                    f.value,
                )
            )


def write_json(path: Path, report: DispatchReport) -> None:
    path.write_text(json.dumps(report_json(report), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def report_table(report: DispatchReport) -> Table:
    name = f" {report.division_name}" if report.division_name else ""
    table = Table(
        title=f"Dispatch statistics (定期调度) {report.division}{name}, "
        f"{report.first_day.isoformat()} to {report.last_day.isoformat()}"
    )
    table.add_column("section")
    table.add_column("item")
    for column in ("batteries", "kg", "value"):
        table.add_column(column, justify="right")
    for f in figures(report):
        table.add_row(
            f.section,
            f"{f.item} {f.label}",
            "" if f.batteries is None else f"{f.batteries:,}",
            "" if f.kilograms is None else f"{f.kilograms:,.3f}",
            f.value,
        )
    return table


def output_paths(output: Path | None, fmt: str, report: DispatchReport) -> list[tuple[Path, str]]:
    """(path, format) of each file to write: --output as given (its .json and .csv siblings for both, the
    format's suffix added when it has none), else dispatch-<division>-<first day>-<last day> here."""
    base = output or Path(f"dispatch-{report.division}-{report.first_day}-{report.last_day}")
    if fmt == "both":
        return [(base.with_suffix(".json"), "json"), (base.with_suffix(".csv"), "csv")]
    return [(base if base.suffix else base.with_suffix(f".{fmt}"), fmt)]


# ---- the command ---------------------------------------------------------------------------------------


def run_dispatch_command(
    division: str | None,
    from_day: str | None,
    to_day: str | None,
    fmt: str,
    output: Path | None,
    flows: str | None,
    as_participant: str,
    connect_timeout: float,
    console: Console,
) -> int:
    """What `greenmesh report dispatch` does; returns the exit status."""
    try:
        report = _produce(division, from_day, to_day, fmt, flows, as_participant, connect_timeout, console)
        paths = output_paths(output, fmt, report)
        console.print(report_table(report))
        for path, kind in paths:
            try:
                (write_json if kind == "json" else write_csv)(path, report)
            except OSError as error:
                raise ReportProblem(f"could not write {path}: {error.strerror or error}") from None
            console.print(f"written: {path}")
    except ReportProblem as problem:
        console.print(f"[red]greenmesh report dispatch: {problem}[/red]", soft_wrap=True)
        return 2
    return 0


def _produce(
    division: str | None,
    from_day: str | None,
    to_day: str | None,
    fmt: str,
    flows: str | None,
    as_participant: str,
    connect_timeout: float,
    console: Console,
) -> DispatchReport:
    from meshkit.ids import is_uuid

    missing = [
        option for option, value in (("--division", division), ("--from", from_day), ("--to", to_day)) if not value
    ]
    if missing:
        raise ReportProblem(
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required, "
            "e.g. --division 32 --from 2026-10-01 --to 2026-11-01 (October 2026)"
        )
    assert division is not None and from_day is not None and to_day is not None
    if fmt not in FORMATS:
        raise ReportProblem(f"--format {fmt!r}: one of {', '.join(FORMATS)}")
    if not is_uuid(as_participant):
        raise ReportProblem(f"--as-participant {as_participant!r} is not a participant id (a UUID)")
    request = dispatch_request(division, parse_day(from_day, "--from"), parse_day(to_day, "--to"))
    if flows is None:
        flows, source = component_address("flows")
    else:
        source = "--flows"
    console.print(f"asking the flows service at {flows} (from {source})")
    response = asyncio.run(
        fetch_dispatch_statistics(flows, request, operator_caller(as_participant), connect_timeout=connect_timeout)
    )
    return DispatchReport(response, flows)


__all__ = ["DISPATCH_HELP", "LOCAL_OPERATOR_ID", "run_dispatch_command"]
