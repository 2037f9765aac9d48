"""`greenmesh energy import-readings`: the real command, as a subprocess, against the real energy service (gRPC on
port 0, real NATS, SQLite or PostgreSQL): a file of two meters imported twice (the second time nothing changes),
and a file with a bad row whose batch is refused and reported by CSV line."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import os
import re
import sys
from pathlib import Path

from greenmesh.energy.v1 import energy_pb2 as pb
from tests.energy.conftest import T0, Energy, minutes

GREENMESH = [sys.executable, "-m", "greenmesh_cli"]
SUMMARY = re.compile(
    r"([\d,]+) rows: ([\d,]+) inserted, ([\d,]+) updated, ([\d,]+) unchanged, ([\d,]+) flagged, ([\d,]+) rejected"
)


async def run_cli(energy: Energy, *args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GREENMESH_", "OTEL_"))}
    env["COLUMNS"] = "200"
    # The CLI shares the service's data directory (as with `greenmesh up`): it signs with the key energy checks.
    env["GREENMESH_DATA_DIR"] = str(energy.runtime.settings.data_dir)
    process = await asyncio.create_subprocess_exec(
        *GREENMESH, "energy", "import-readings", *args, "--energy", f"127.0.0.1:{energy.runtime.port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, output.decode()


def write(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["meter_id", "start", "end", "value", "estimated"])
        writer.writerows(rows)
    return path


def quarter(meter_id: str, i: int, value: float, estimated: str = "") -> list[str]:
    start = T0 + dt.timedelta(minutes=15 * i)
    return [meter_id, start.isoformat(), (start + dt.timedelta(minutes=15)).isoformat(), f"{value:g}", estimated]


async def test_readings_import_from_csv_and_again_changes_nothing(energy: Energy, tmp_path: Path) -> None:
    first = await energy.meter()
    second = await energy.meter(role=pb.METER_ROLE_IT_LOAD, it_measurement_point=pb.IT_MEASUREMENT_POINT_UPS_OUTPUT)
    rows = [quarter(first.meter_id, i, 10 + i % 5) for i in range(300)]
    rows += [quarter(second.meter_id, i, 7 + i % 3, "是" if i == 3 else "") for i in range(200)]
    path = write(tmp_path / "readings.csv", rows)
    status, output = await run_cli(energy, str(path))
    assert status == 0, output
    assert SUMMARY.search(output).groups() == ("500", "500", "0", "0", "1", "0")  # type: ignore[union-attr]
    status, output = await run_cli(energy, str(path))
    assert status == 0, output
    assert SUMMARY.search(output).groups() == ("500", "0", "0", "500", "0", "0")  # type: ignore[union-attr]
    assert await energy.count("reading") == 500


async def test_a_bad_row_refuses_its_batch_and_is_named_by_line(energy: Energy, tmp_path: Path) -> None:
    meter = await energy.meter()
    good = [quarter(meter.meter_id, i, 5) for i in range(10)]
    bad = quarter(meter.meter_id, 20, -3)  # negative imported energy
    unparsable = [meter.meter_id, "yesterday", T0.isoformat(), "1", ""]
    path = write(tmp_path / "bad.csv", [*good, bad, unparsable])
    status, output = await run_cli(energy, str(path))
    assert status == 1, output
    assert SUMMARY.search(output).groups() == ("12", "0", "0", "0", "0", "12")  # type: ignore[union-attr]
    lines = {int(m.group(1)): m.group(2) for m in re.finditer(r"│\s+(\d+) │ (\w+|\(batch\))", output)}
    assert lines[12] == "value" and lines[13] == "start"  # the header is line 1
    assert await energy.count("reading") == 0
    missing = await run_cli(energy, str(tmp_path / "nope.csv"))
    assert missing[0] == 2 and "no such file" in missing[1]


async def test_series_values_import_from_the_same_file(energy: Energy, tmp_path: Path) -> None:
    meter = await energy.meter()
    series = (
        await energy.call(
            "CreateIndependentSeries",
            pb.CreateIndependentSeriesRequest(
                series=pb.IndependentSeries(
                    site_id=energy.data_center.id, name="outdoor_temp_c", unit=pb.UNIT_DEG_C, interval=minutes(15)
                )
            ),
            energy.data_center.caller,
        )
    ).series
    path = tmp_path / "mixed.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["meter_id", "series_id", "start", "end", "value"])
        for i in range(4):  # meter rows leave series_id empty
            owner, start, end, value, _ = quarter(meter.meter_id, i, 10)
            writer.writerow([owner, "", start, end, value])
        for i in range(6):  # series rows leave meter_id empty; a temperature may be negative
            owner, start, end, value, _ = quarter(series.series_id, i, -2.5 + i)
            writer.writerow(["", owner, start, end, value])
        _, start, end, value, _ = quarter(meter.meter_id, 9, 1)
        writer.writerow([meter.meter_id, series.series_id, start, end, value])  # both: refused locally
    status, output = await run_cli(energy, str(path))
    assert status == 1, output
    assert SUMMARY.search(output).groups() == ("11", "10", "0", "0", "0", "1")  # type: ignore[union-attr]
    assert "not both" in output
    assert await energy.count("series_value") == 6 and await energy.count("reading") == 4
