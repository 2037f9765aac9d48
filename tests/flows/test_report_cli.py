"""`greenmesh report dispatch`: the real command, as a subprocess, against the real flows service (gRPC on port
0, real NATS, SQLite) whose tables hold the rows of test_statistics; and the exit status 2 cases."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from meshkit.localinfra import NatsServer, free_port
from services.flows.service import DEFINITION as FLOWS
from tests.conftest import RuntimeFactory
from tests.flows.test_statistics import rows
from tests.foundation.test_health_readiness import SERVING, wait_health

GREENMESH = [sys.executable, "-m", "greenmesh_cli", "report", "dispatch"]
OCTOBER = ("--division", "32", "--from", "2026-10-01", "--to", "2026-11-01")


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GREENMESH_", "OTEL_"))}
    env["COLUMNS"] = "200"
    env.update(extra)
    return env


async def run_cli(*args: str, cwd: Path, **env: str) -> tuple[int, str]:
    """The command in its own process; the flows service keeps serving in this loop."""
    process = await asyncio.create_subprocess_exec(
        *GREENMESH, *args, cwd=cwd, env=cli_env(**env), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, output.decode()


def read_csv(path: Path) -> list[dict[str, str]]:
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")  # the BOM Excel needs for Chinese text
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_report_from_the_real_flows_service(
    nats_server: NatsServer, make_runtime: RuntimeFactory, database_url: str, tmp_path: Path
) -> None:
    runtime = await make_runtime(FLOWS, nats_url=nats_server.url, database_url=database_url)
    await wait_health(runtime, SERVING)
    async with runtime.database.transaction() as session:
        session.add_all(rows())

    # The CLI shares the service's data directory (as with `greenmesh up`): it signs with the key flows checks.
    mesh_data = str(runtime.settings.data_dir)
    status, output = await run_cli(
        *OCTOBER, "--flows", f"127.0.0.1:{runtime.port}", "--output", str(tmp_path / "october"), cwd=tmp_path,
        GREENMESH_DATA_DIR=mesh_data,
    )  # fmt: skip
    assert status == 0, output
    assert "2026-10-01 to 2026-10-31" in output and "江苏省" in output
    assert "written: " in output

    report = json.loads((tmp_path / "october.json").read_text(encoding="utf-8"))
    assert report["division_code"] == "32"
    assert report["period"] == {
        "start": "2026-10-01T00:00:00+08:00",
        "end": "2026-11-01T00:00:00+08:00",
        "first_day": "2026-10-01",
        "last_day": "2026-10-31",
    }
    assert report["collected"] == {
        "by_mode": [
            {"mode": "TRADE_IN", "batteries": 5, "kilograms": 50.75},
            {"mode": "DOOR_TO_DOOR", "batteries": 1, "kilograms": 12.0},
            {"mode": "INTERNET", "batteries": 4, "kilograms": 8.0},
            {"mode": "DROP_OFF", "batteries": 0, "kilograms": 0.0},
            {"mode": "COOP_STATION", "batteries": 5, "kilograms": 40.0},
            {"mode": "FLEET_RETURN", "batteries": 7, "kilograms": 70.0},
        ],
        "batteries": 22,
        "kilograms": 180.75,
    }
    assert report["delivered_to_recyclers"] == {"batteries": 10, "kilograms": 101.5}
    assert report["recycled"] == {"batteries": 3, "kilograms": 41.5}
    assert report["compliant_channel_rate"] == 0.5
    parts = report["compliant_channel"]
    assert parts["collected"] > 0 and parts["reached_recycler"] / parts["collected"] == 0.5
    assert report["open_alerts"] == {
        "OVERDUE_STORAGE": 2, "POSSIBLE_DIVERSION": 1, "OVERSTOCK": 0, "MASS_BALANCE": 0, "RULE_HIT": 0,
    }  # fmt: skip
    assert report["late_reports"] == 3

    table = read_csv(tmp_path / "october.csv")
    assert list(table[0]) == [
        "division_code", "period_first_day", "period_last_day", "section", "item", "label_zh", "batteries",
        "kilograms", "value",
    ]  # fmt: skip
    assert {(r["division_code"], r["period_first_day"], r["period_last_day"]) for r in table} == {
        ("32", "2026-10-01", "2026-10-31")
    }
    by_item = {(r["section"], r["item"]): r for r in table}
    assert len(by_item) == len(table) == 6 + 1 + 1 + 1 + 1 + 2 + 5 + 1  # modes, totals, rate and its parts, alerts
    assert (by_item["collected", "TRADE_IN"]["batteries"], by_item["collected", "TRADE_IN"]["kilograms"]) == (
        "5",
        "50.750",
    )
    assert by_item["collected", "TRADE_IN"]["label_zh"] == "以旧换新回收量"
    assert (by_item["collected", "TOTAL"]["batteries"], by_item["collected", "TOTAL"]["kilograms"]) == ("22", "180.750")
    assert by_item["delivered_to_recyclers", "TOTAL"]["batteries"] == "10"
    assert by_item["recycled", "TOTAL"]["kilograms"] == "41.500"
    assert by_item["compliant_channel_rate", "PERCENT"]["value"] == "50.00"
    assert by_item["compliant_channel_rate", "PERCENT"]["batteries"] == ""
    assert by_item["compliant_channel_rate", "COLLECTED"]["batteries"] == str(parts["collected"])
    assert by_item["compliant_channel_rate", "REACHED_RECYCLER"]["batteries"] == str(parts["reached_recycler"])
    assert by_item["open_alerts", "OVERDUE_STORAGE"]["value"] == "2"
    assert by_item["late_reports", "EVENTS"]["value"] == "3"

    # Without --flows the address comes from the running mesh's mesh.json; a county, as CSV only, to the
    # default file name in the current directory.
    data_dir = runtime.settings.data_dir
    mesh = {"province": "32", "nats_url": nats_server.url, "grpc": {"flows": f"127.0.0.1:{runtime.port}"}}
    (data_dir / "mesh.json").write_text(json.dumps({**mesh, "gateway_http": "", "pid": os.getpid()}))
    status, output = await run_cli(
        "--division", "320102", "--from", "2026-10-01", "--to", "2026-11-01", "--format", "csv",
        cwd=tmp_path, GREENMESH_DATA_DIR=str(data_dir),
    )  # fmt: skip
    assert status == 0, output
    assert "mesh.json" in output
    county = {(r["section"], r["item"]): r for r in read_csv(tmp_path / "dispatch-320102-2026-10-01-2026-10-31.csv")}
    assert county["collected", "TOTAL"]["batteries"] == "15"
    assert not (tmp_path / "dispatch-320102-2026-10-01-2026-10-31.json").exists()


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GREENMESH, *args], cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=60)


def one_line(status: int, output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("greenmesh report dispatch:")]
    assert status == 2 and len(lines) == 1, output
    return lines[0]


def test_unreachable_service_and_a_bad_date_exit_with_status_2(tmp_path: Path) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    unreachable = run(*OCTOBER, "--flows", nobody, "--connect-timeout", "1", cwd=tmp_path)
    assert "no flows service answers at " + nobody in one_line(unreachable.returncode, unreachable.stdout)
    bad_date = run("--division", "32", "--from", "2026-10-32", "--to", "2026-11-01", cwd=tmp_path)
    assert "--from '2026-10-32' is not a date" in one_line(bad_date.returncode, bad_date.stdout)
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--division", "32", "--from", "2026-10-01", "--to", "1.11.2026"), "--to '1.11.2026' is not a date"),
        (("--division", "32", "--from", "2026-11-01", "--to", "2026-10-01"), "--to: must be after --from"),
        (("--division", "32", "--from", "2026-10-01", "--to", "2026-10-01"), "--to: must be after --from"),
        (("--division", "32", "--from", "2026-01-01", "--to", "2027-03-01"), "at most 400 days; this one spans 424"),
        (("--division", "江苏", "--from", "2026-10-01", "--to", "2026-11-01"), "--division: '江苏' is not a GB/T 2260"),
        (("--division", "321", "--from", "2026-10-01", "--to", "2026-11-01"), "--division: '321' is not"),
        (("--from", "2026-10-01", "--to", "2026-11-01"), "--division is required"),
        (("--division", "32"), "--from and --to are required"),
        ((*OCTOBER, "--format", "xlsx"), "--format 'xlsx': one of json, csv, both"),
        ((*OCTOBER, "--as-participant", "operator"), "--as-participant 'operator' is not a participant id"),
    ],
)
def test_wrong_arguments_exit_with_status_2_before_any_connection(
    args: tuple[str, ...], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from greenmesh_cli.main import app

    monkeypatch.chdir(tmp_path)
    nobody = f"127.0.0.1:{free_port()}"  # never asked: the arguments are checked first
    result = CliRunner().invoke(app, ["report", "dispatch", *args, "--flows", nobody], env={"COLUMNS": "200"})
    assert expected in one_line(result.exit_code, result.output), result.output
    assert "asking the flows service" not in result.output
    assert list(tmp_path.iterdir()) == []
