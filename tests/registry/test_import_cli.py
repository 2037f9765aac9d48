"""`greenmesh registry import`: the real command, as a subprocess, against a real registry (gRPC on port 0,
real NATS, SQLite or PostgreSQL). 10,000 facilities in the real counties of Jiangsu, imported three times
(new, identical, three rows changed), and a file of bad rows reported by line and column."""

from __future__ import annotations

import asyncio
import csv
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlmodel import col, func, select

from greenmesh.registry.v1 import registry_pb2 as pb
from meshkit.localinfra import free_port
from meshkit.tables import OutboxEvent
from services.registry.domain.credit_code import make_credit_code
from services.registry.domain.divisions import COVERAGE_LEVELS, DivisionTable, load_division_table
from services.registry.tables import FacilityRow, ParticipantRow
from tests.registry.conftest import NANSHAN, XUANWU, Registry

GREENMESH = [sys.executable, "-m", "greenmesh_cli"]
HEADER = [
    "operator_credit_code", "operator_facility_code", "name", "facility_type", "county_code", "latitude",
    "longitude", "address", "opening_hours", "phone", "recycling_modes", "max_stock_kg", "max_stock_units",
    "max_dwell_days", "fire_class", "has_discharge_equipment", "has_monitoring",
]  # fmt: skip
SUMMARY = re.compile(r"([\d,]+) rows: ([\d,]+) created, ([\d,]+) updated, ([\d,]+) unchanged, ([\d,]+) rejected")
TRUE_SPELLINGS = ("true", "1", "yes", "是", "TRUE")
FALSE_SPELLINGS = ("false", "0", "no", "否", "")
# Written as an operator's spreadsheet might: with and without the enum prefix, in any case.
TYPES = ("RECYCLING_OUTLET", "TEMP_STORAGE_POINT", "FACILITY_TYPE_COOP_STATION", "dealer_store")
MODES = ("TRADE_IN;DROP_OFF", "DOOR_TO_DOOR", "", "RECYCLING_MODE_INTERNET; trade_in")


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GREENMESH_", "OTEL_"))}
    env["COLUMNS"] = "200"
    env.update(extra)
    return env


async def import_csv(path: Path, registry: Registry, *extra: str, data_dir: Path | None = None) -> tuple[int, str]:
    """Run `greenmesh registry import` in its own process; the registry keeps serving in this loop. The CLI
    shares the registry's data directory (as with `greenmesh up`), so it signs with the key the registry checks."""
    data_dir = registry.runtime.settings.data_dir if data_dir is None else data_dir
    process = await asyncio.create_subprocess_exec(
        *GREENMESH, "registry", "import", str(path), "--registry", f"127.0.0.1:{registry.runtime.port}", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=cli_env(GREENMESH_DATA_DIR=str(data_dir)),
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, output.decode()


def summary(output: str) -> tuple[int, int, int, int, int]:
    """(rows, created, updated, unchanged, rejected) from the command's last line."""
    found = SUMMARY.search(output)
    assert found, output
    rows, created, updated, unchanged, rejected = (int(g.replace(",", "")) for g in found.groups())
    return rows, created, updated, unchanged, rejected


def write_csv(path: Path, rows: Sequence[dict[str, str]], *, bom: bool = True) -> None:
    with path.open("w", encoding="utf-8-sig" if bom else "utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=HEADER)
        writer.writeheader()
        writer.writerows(rows)


def point_inside(table: DivisionTable, code: str, rng: random.Random) -> tuple[float, float]:
    """(lat, lon) a little off the county's representative point, rounded as a CSV holds it, and inside."""
    anchor = table.geometries[code].representative_point()
    for _ in range(50):
        lon = round(anchor.x + rng.uniform(-0.02, 0.02), 6)
        lat = round(anchor.y + rng.uniform(-0.02, 0.02), 6)
        if table.contains(code, lon, lat):
            return lat, lon
    lat, lon = round(anchor.y, 6), round(anchor.x, 6)
    assert table.contains(code, lon, lat)
    return lat, lon


def jiangsu_rows(table: DivisionTable, operators: Sequence[pb.Participant], count: int) -> list[dict[str, str]]:
    rng = random.Random(32)
    counties = [c.code for c in table.counties_in_province("32", COVERAGE_LEVELS)]
    assert len(counties) > 90
    rows = []
    for i in range(count):
        county = counties[i % len(counties)]
        lat, lon = point_inside(table, county, rng)
        kind = TYPES[i % len(TYPES)]
        stores = kind != "dealer_store"
        rows.append(
            {
                "operator_credit_code": operators[i % len(operators)].credit_code,
                "operator_facility_code": f"JS-{i:05d}",
                "name": f"以旧换新回收网点 {i}",
                "facility_type": kind,
                "county_code": county,
                "latitude": f"{lat:.6f}",
                "longitude": f"{lon:.6f}",
                "address": f"测试路 {i} 号",
                "opening_hours": "09:00-18:00",
                "phone": f"025-8888 {i % 10_000:04d}",
                "recycling_modes": MODES[i % len(MODES)],
                "max_stock_kg": f"{500 + i % 7 * 0.5}" if stores else "",
                "max_stock_units": str(60 + i % 5) if stores else "",
                "max_dwell_days": "30" if stores else "",
                "fire_class": "B" if stores else "",
                "has_discharge_equipment": TRUE_SPELLINGS[i % len(TRUE_SPELLINGS)],
                "has_monitoring": (TRUE_SPELLINGS if i % 3 else FALSE_SPELLINGS)[i % 5],
            }
        )
    return rows


def expected_columns(row: dict[str, str], operator_ids: dict[str, str]) -> dict[str, object]:
    """What the registry should store for one CSV row."""
    modes = [m.strip().upper().removeprefix("RECYCLING_MODE_") for m in row["recycling_modes"].split(";") if m]
    return {
        "operator_id": operator_ids[row["operator_credit_code"]],
        "name": row["name"],
        "facility_type": row["facility_type"].upper().removeprefix("FACILITY_TYPE_"),
        "county_code": row["county_code"],
        "latitude": float(row["latitude"]),
        "longitude": float(row["longitude"]),
        "address": row["address"],
        "phone": row["phone"],
        "recycling_modes": ",".join(sorted(modes)),
        "max_stock_kg": float(row["max_stock_kg"] or 0),
        "max_dwell_days": int(row["max_dwell_days"] or 0),
        "has_discharge_equipment": row["has_discharge_equipment"].lower() in ("true", "1", "yes", "是"),
        "has_monitoring": row["has_monitoring"].lower() in ("true", "1", "yes", "是"),
    }


async def stored_facilities(registry: Registry) -> dict[str, FacilityRow]:
    async with registry.runtime.database.session() as session:
        rows = (await session.exec(select(FacilityRow))).all()
    return {row.operator_facility_code: row for row in rows}


async def outbox_count(registry: Registry) -> int:
    async with registry.runtime.database.session() as session:
        return int((await session.exec(select(func.count()).select_from(OutboxEvent))).one())


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_ten_thousand_facilities_import_once_and_reimport_idempotently(
    registry: Registry, tmp_path: Path
) -> None:
    table = load_division_table()
    operators = [
        await registry.participant("RECYCLING_OUTLET_OPERATOR", division=division)
        for division in ("320102", "320506", "320211", "321002")
    ]
    operator_ids = {op.credit_code: op.participant_id for op in operators}
    rows = jiangsu_rows(table, operators, 10_000)
    path = tmp_path / "facilities.csv"
    write_csv(path, rows)  # with the BOM Excel writes

    started = time.perf_counter()
    status, output = await import_csv(path, registry)
    first = time.perf_counter() - started
    assert status == 0, output
    assert summary(output) == (10_000, 10_000, 0, 0, 0)

    stored = await stored_facilities(registry)
    assert len(stored) == 10_000
    for row in rows:
        facility = stored[row["operator_facility_code"]]
        got = {name: getattr(facility, name) for name in expected_columns(row, operator_ids)}
        assert got == expected_columns(row, operator_ids), row
        assert (facility.accreditation_status, facility.version) == ("DRAFT", 1)
    assert {f.county_code for f in stored.values()} == {
        c.code for c in table.counties_in_province("32", COVERAGE_LEVELS)
    }

    # The same file again: nothing is written, not even an event.
    before = await outbox_count(registry)
    started = time.perf_counter()
    status, output = await import_csv(path, registry)
    second = time.perf_counter() - started
    assert status == 0, output
    assert summary(output) == (10_000, 0, 0, 10_000, 0)
    assert await outbox_count(registry) == before
    assert {code: f.version for code, f in (await stored_facilities(registry)).items()} == dict.fromkeys(stored, 1)

    # Three rows changed (a name, a position in the same county, a flag): three updates, three events.
    changed = [dict(row) for row in rows]
    changed[0]["name"] = "以旧换新回收网点 0 新址"
    changed[5_000]["latitude"], changed[5_000]["longitude"] = (
        f"{v:.6f}" for v in point_inside(table, changed[5_000]["county_code"], random.Random(1))
    )
    assert changed[5_000]["latitude"] != rows[5_000]["latitude"]
    changed[9_999]["has_monitoring"] = "否" if expected_columns(rows[9_999], operator_ids)["has_monitoring"] else "是"
    write_csv(path, changed, bom=False)
    started = time.perf_counter()
    status, output = await import_csv(path, registry)
    third = time.perf_counter() - started
    assert status == 0, output
    assert summary(output) == (10_000, 0, 3, 9_997, 0)
    assert await outbox_count(registry) == before + 3
    after = await stored_facilities(registry)
    for index in (0, 5_000, 9_999):
        facility = after[changed[index]["operator_facility_code"]]
        assert facility.version == 2
        assert {name: getattr(facility, name) for name in expected_columns(changed[index], operator_ids)} == (
            expected_columns(changed[index], operator_ids)
        )
    assert sum(f.version for f in after.values()) == 10_003
    print(f"\nimport of 10,000 rows: new {first:.1f} s, identical {second:.1f} s, 3 changed {third:.1f} s")


async def test_the_cli_of_another_data_directory_is_refused(registry: Registry, tmp_path: Path) -> None:
    """The CLI signs as the platform operator with its data directory's key: another machine's (or mesh's)
    key is refused by the registry, and nothing is stored."""
    operator = await registry.participant("RECYCLING_OUTLET_OPERATOR")
    county, lat, lon = XUANWU
    row = dict.fromkeys(HEADER, "")
    row.update(
        operator_credit_code=operator.credit_code, operator_facility_code="ELSEWHERE-1", name="回收网点",
        facility_type="RECYCLING_OUTLET", county_code=county, latitude=str(lat), longitude=str(lon),
    )  # fmt: skip
    path = tmp_path / "one.csv"
    write_csv(path, [row])
    status, output = await import_csv(path, registry, data_dir=tmp_path / "elsewhere")
    assert status == 2, output
    assert "UNAUTHENTICATED" in output and "not match" in output, output
    assert (tmp_path / "elsewhere" / "caller.key").read_text() != (
        registry.runtime.settings.data_dir / "caller.key"
    ).read_text()
    assert await stored_facilities(registry) == {}


async def test_bad_rows_are_reported_by_line_and_column_and_none_is_stored(registry: Registry, tmp_path: Path) -> None:
    operator = await registry.participant("RECYCLING_OUTLET_OPERATOR")
    county, lat, lon = XUANWU

    def row(code: str, **changes: str) -> dict[str, str]:
        base = {
            "operator_credit_code": operator.credit_code, "operator_facility_code": code, "name": "回收网点",
            "facility_type": "RECYCLING_OUTLET", "county_code": county, "latitude": str(lat), "longitude": str(lon),
            "address": "测试路 1 号", "opening_hours": "", "phone": "", "recycling_modes": "TRADE_IN",
            "max_stock_kg": "500", "max_stock_units": "60", "max_dwell_days": "30", "fire_class": "B",
            "has_discharge_equipment": "是", "has_monitoring": "no",
        }  # fmt: skip
        return {**base, **changes}

    good_code = operator.credit_code
    wrong_check = good_code[:-1] + ("0" if good_code[-1] != "0" else "1")
    unregistered = make_credit_code("320102", seed=987_654_321)
    rows = [
        row("OK-1"),  # line 2
        row("BAD-TYPE", facility_type="RECYCLING_SHOP"),  # line 3: the CLI refuses it
        row("BAD-PLACE", latitude=str(NANSHAN[1]), longitude=str(NANSHAN[2])),  # line 4: Shenzhen, not Xuanwu
        row("BAD-CODE", operator_credit_code=wrong_check),  # line 5: the check character is wrong
        row("BAD-LAT", latitude="32.07N"),  # line 6: the CLI refuses it
        row("NO-OPERATOR", operator_credit_code=unregistered),  # line 7: valid code, nobody registered
        row("BAD-ADDRESS", address="测试路 1 号\n二楼"),  # lines 8-9: a quoted line break (a control character)
        row("NO-DWELL", max_dwell_days=""),  # line 10: a storage site needs its dwell limit
        row("LONG-FIRE", fire_class="B" * 11),  # line 11: longer than a fire class label can be
        row("OK-2"),  # line 12
    ]
    path = tmp_path / "bad.csv"
    write_csv(path, rows)
    errors_path = tmp_path / "errors.csv"

    status, output = await import_csv(path, registry, "--errors-csv", str(errors_path))
    assert status == 1, output
    assert summary(output) == (10, 2, 0, 0, 8)
    assert re.search(r"received by the registry\s*│\s*8\b", output), output  # the CLI's rejects are not sent
    with errors_path.open(encoding="utf-8-sig", newline="") as handle:
        reported = {(int(r["row"]), r["field"]): r["description"] for r in csv.DictReader(handle)}
    assert set(reported) == {
        (3, "facility_type"),
        (4, "latitude/longitude"),
        (5, "operator_credit_code"),
        (6, "latitude"),
        (7, "operator_credit_code"),
        (8, "address"),
        (10, "max_dwell_days"),
        (11, "fire_class"),
    }, reported
    assert "RECYCLING_SHOP" in reported[(3, "facility_type")]
    assert "440305" in reported[(4, "latitude/longitude")] and "320102" in reported[(4, "latitude/longitude")]
    assert reported[(5, "operator_credit_code")].startswith("operator_credit_code: check_character")
    assert "'32.07N' is not a number" in reported[(6, "latitude")]
    assert "no registered participant" in reported[(7, "operator_credit_code")]
    assert "at most 10 characters" in reported[(11, "fire_class")]
    for line in ("3", "4", "5", "6", "7", "8", "10", "11"):  # the table on the terminal shows them too
        assert re.search(rf"│\s+{line} │", output), output

    async with registry.runtime.database.session() as session:
        codes = (await session.exec(select(FacilityRow.operator_facility_code))).all()
        participants = (
            await session.exec(select(ParticipantRow).where(col(ParticipantRow.credit_code) == unregistered))
        ).all()
    assert sorted(codes) == ["OK-1", "OK-2"]
    assert participants == []


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GREENMESH, "registry", "import", *args], env=cli_env(), capture_output=True, text=True, timeout=60
    )


def test_file_and_connection_problems_exit_with_status_2(tmp_path: Path) -> None:
    missing = run_cli(str(tmp_path / "nope.csv"), "--registry", "127.0.0.1:1")
    assert missing.returncode == 2 and "no such file" in missing.stdout, missing

    no_latitude = tmp_path / "no_latitude.csv"
    no_latitude.write_text(",".join(h for h in HEADER if h != "latitude") + "\n", encoding="utf-8")
    header = run_cli(str(no_latitude), "--registry", "127.0.0.1:1")
    assert header.returncode == 2 and "required column(s) latitude" in header.stdout, header

    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes((",".join(HEADER) + "\n").encode() + "Caf\xe9,x\n".encode("latin-1"))
    encoding = run_cli(str(latin1), "--registry", "127.0.0.1:1")
    assert encoding.returncode == 2 and "not UTF-8" in encoding.stdout, encoding

    good = tmp_path / "one.csv"
    write_csv(good, [dict.fromkeys(HEADER, "1")])
    nobody = run_cli(str(good), "--registry", f"127.0.0.1:{free_port()}", "--connect-timeout", "1")
    assert nobody.returncode == 2 and "no registry answers" in nobody.stdout, nobody
