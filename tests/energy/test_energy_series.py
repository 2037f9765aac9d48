"""Independent series over gRPC on SQLite and PostgreSQL: a named series at a site (outdoor temperature, traffic in
TB), its values upserted idempotently on (series, start, end) with the checks and quality flags of readings, the
same bulk path as readings (UploadReadings), and clear refusals that store nothing."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration

from greenmesh.energy.v1 import energy_pb2 as pb
from meshkit.caller import Caller
from tests.energy.conftest import T0, Energy, Site, has_violation, minutes, readings, ts
from tests.registry.conftest import GUANGDONG_REGULATOR, JIANGSU_REGULATOR, PLATFORM

HOUR = 3600
HOUR_TD = dt.timedelta(hours=1)
DAY_TD = dt.timedelta(days=1)


async def create_series(energy: Energy, site: Site | None = None, **fields: Any) -> pb.IndependentSeries:
    """An independent series at ``site`` (the data centre by default), created by the site's operator."""
    site = site or energy.data_center
    series = pb.IndependentSeries(site_id=site.id, **fields)
    reply = await energy.call("CreateIndependentSeries", pb.CreateIndependentSeriesRequest(series=series), site.caller)
    return reply.series  # type: ignore[no-any-return]


async def upsert_values(
    energy: Energy, series: pb.IndependentSeries, items: list[pb.Reading], caller: Caller | None = None
) -> pb.UpsertSeriesValuesResponse:
    reply = await energy.call(
        "UpsertSeriesValues",
        pb.UpsertSeriesValuesRequest(series_id=series.series_id, values=items),
        caller or energy.data_center.caller,
    )
    return reply  # type: ignore[no-any-return]


async def test_a_series_is_created_with_its_unit_and_aggregation(energy: Energy) -> None:
    temperature = await create_series(
        energy, name="outdoor_temp_c", unit=pb.UNIT_DEG_C, interval=minutes(60), source="CMA station 58238"
    )
    assert temperature.aggregation == pb.SERIES_AGGREGATION_MEAN  # follows the unit
    assert temperature.series_id and temperature.created_by == energy.data_center.operator.participant_id
    traffic = await create_series(
        energy, name="traffic_tb", unit_label="TB", aggregation=pb.SERIES_AGGREGATION_SUM
    )  # irregular: one value per calendar month
    assert not traffic.HasField("interval") and traffic.unit == pb.UNIT_UNSPECIFIED
    got = await energy.call(
        "GetIndependentSeries", pb.GetIndependentSeriesRequest(series_id=temperature.series_id), JIANGSU_REGULATOR
    )
    assert got.series == temperature

    twice = await energy.refused(
        "CreateIndependentSeries",
        pb.CreateIndependentSeriesRequest(
            series=pb.IndependentSeries(site_id=energy.data_center.id, name="outdoor_temp_c", unit=pb.UNIT_DEG_C)
        ),
        energy.data_center.caller,
    )
    assert twice.code() == grpc.StatusCode.ALREADY_EXISTS
    bad = await energy.refused(
        "CreateIndependentSeries",
        pb.CreateIndependentSeriesRequest(
            series=pb.IndependentSeries(
                site_id=energy.data_center.id,
                name="Outdoor Temp",
                unit=pb.UNIT_DEG_C,
                unit_label="°C",
                interval=Duration(seconds=2 * 86_400),
            )
        ),
        energy.data_center.caller,
    )
    assert has_violation(bad, "series.name", "snake_case")
    assert has_violation(bad, "series.unit_label", "not both")
    assert has_violation(bad, "series.interval", "one day")
    mismatch = await energy.refused(
        "CreateIndependentSeries",
        pb.CreateIndependentSeriesRequest(
            series=pb.IndependentSeries(
                site_id=energy.data_center.id,
                name="it_load_kwh",
                unit=pb.UNIT_KWH,
                aggregation=pb.SERIES_AGGREGATION_MEAN,
            )
        ),
        energy.data_center.caller,
    )
    assert has_violation(mismatch, "series.aggregation", "UNIT_MISMATCH")
    no_aggregation = await energy.refused(
        "CreateIndependentSeries",
        pb.CreateIndependentSeriesRequest(
            series=pb.IndependentSeries(site_id=energy.data_center.id, name="calls_erl", unit_label="Erl")
        ),
        energy.data_center.caller,
    )
    assert has_violation(no_aggregation, "series.aggregation", "required")
    elsewhere = await energy.refused(
        "CreateIndependentSeries",
        pb.CreateIndependentSeriesRequest(
            series=pb.IndependentSeries(site_id=energy.outlet_id, name="x", unit=pb.UNIT_DEG_C)
        ),
        PLATFORM,
    )
    assert has_violation(elsewhere, "series.site_id", "not a DATA_CENTER or BASE_STATION")
    denied = await energy.refused(
        "CreateIndependentSeries",
        pb.CreateIndependentSeriesRequest(
            series=pb.IndependentSeries(site_id=energy.data_center.id, name="y", unit=pb.UNIT_DEG_C)
        ),
        energy.shenzhen.caller,
    )
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await energy.count("independent_series") == 2

    # Lists are scoped: an operator sees its sites' series, a regulator its region's.
    await create_series(energy, site=energy.shenzhen, name="outdoor_temp_c", unit=pb.UNIT_DEG_C)
    mine = await energy.call(
        "ListIndependentSeries", pb.ListIndependentSeriesRequest(page_size=1), energy.data_center.caller
    )
    assert len(mine.series) == 1 and mine.next_page_token
    rest = await energy.call(
        "ListIndependentSeries",
        pb.ListIndependentSeriesRequest(page_size=1, page_token=mine.next_page_token),
        energy.data_center.caller,
    )
    assert {mine.series[0].name, rest.series[0].name} == {"outdoor_temp_c", "traffic_tb"} and not rest.next_page_token
    guangdong = await energy.call("ListIndependentSeries", pb.ListIndependentSeriesRequest(), GUANGDONG_REGULATOR)
    assert [s.site_id for s in guangdong.series] == [energy.shenzhen.id]
    hidden = await energy.refused(
        "GetIndependentSeries", pb.GetIndependentSeriesRequest(series_id=temperature.series_id), GUANGDONG_REGULATOR
    )
    assert hidden.code() == grpc.StatusCode.PERMISSION_DENIED
    missing = await energy.refused("GetIndependentSeries", pb.GetIndependentSeriesRequest(series_id="nope"))
    assert missing.code() == grpc.StatusCode.NOT_FOUND


async def test_series_values_are_upserted_idempotently_and_judged_like_readings(energy: Energy) -> None:
    temperature = await create_series(energy, name="outdoor_temp_c", unit=pb.UNIT_DEG_C, interval=minutes(60))
    values = [-3.5, -2.0, 0.0, 1.5] + [4.0] * 8  # below zero is fine for a level; eight equal values are STUCK
    first = await upsert_values(energy, temperature, readings(T0, values, step=HOUR, estimated=[1]))
    assert (first.inserted, first.updated, first.unchanged, first.flagged) == (12, 0, 0, 2)
    again = await upsert_values(energy, temperature, readings(T0, values, step=HOUR, estimated=[1]))
    assert (again.inserted, again.updated, again.unchanged, again.flagged) == (0, 0, 12, 0)
    corrected = await upsert_values(energy, temperature, readings(T0, [-3.0], step=HOUR))
    assert (corrected.inserted, corrected.updated) == (0, 1)
    listed = await energy.call(
        "ListSeriesValues",
        pb.ListSeriesValuesRequest(series_id=temperature.series_id, page_size=5),
        JIANGSU_REGULATOR,
    )
    assert [v.value for v in listed.values] == [-3.0, -2.0, 0.0, 1.5, 4.0] and listed.next_page_token
    assert listed.values[1].estimated and listed.values[1].flags == [pb.QUALITY_FLAG_ESTIMATED]
    assert not listed.values[0].HasField("consumption")
    tail = await energy.call(
        "ListSeriesValues",
        pb.ListSeriesValuesRequest(series_id=temperature.series_id, page_size=50, start_time=ts(T0 + 4 * HOUR_TD)),
        PLATFORM,
    )
    assert len(tail.values) == 8 and list(tail.values[-1].flags) == [pb.QUALITY_FLAG_STUCK]
    assert await energy.count("series_value") == 12

    # Rejected batches store nothing: a wrong length, an overlap with a stored value, below absolute zero.
    wrong = readings(T0 + 20 * HOUR_TD, [1.0, 2.0], step=HOUR)
    wrong[1].end_time.seconds += 60
    error = await energy.refused(
        "UpsertSeriesValues",
        pb.UpsertSeriesValuesRequest(series_id=temperature.series_id, values=wrong),
        energy.data_center.caller,
    )
    assert has_violation(error, "values[1].end", "interval")
    shifted = readings(T0 + dt.timedelta(minutes=30), [9.0], step=HOUR)
    error = await energy.refused(
        "UpsertSeriesValues",
        pb.UpsertSeriesValuesRequest(series_id=temperature.series_id, values=shifted),
        energy.data_center.caller,
    )
    assert has_violation(error, "values[0]", "overlaps the stored reading")
    cold = await energy.refused(
        "UpsertSeriesValues",
        pb.UpsertSeriesValuesRequest(
            series_id=temperature.series_id, values=readings(T0 + 30 * HOUR_TD, [-300.0], step=HOUR)
        ),
        energy.data_center.caller,
    )
    assert has_violation(cold, "values[0].value", "absolute zero")
    # An amount per interval cannot be negative.
    traffic = await create_series(energy, name="traffic_tb", unit_label="TB", aggregation=pb.SERIES_AGGREGATION_SUM)
    negative = await energy.refused(
        "UpsertSeriesValues",
        pb.UpsertSeriesValuesRequest(series_id=traffic.series_id, values=readings(T0, [3.0, -1.0], step=86_400)),
        energy.data_center.caller,
    )
    assert has_violation(negative, "values[1].value", "TB per interval) cannot be negative")
    unknown = await energy.refused(
        "UpsertSeriesValues", pb.UpsertSeriesValuesRequest(series_id="nope", values=readings(T0, [1.0]))
    )
    assert has_violation(unknown, "series_id", "unknown independent series")
    denied = await energy.refused(
        "UpsertSeriesValues",
        pb.UpsertSeriesValuesRequest(series_id=temperature.series_id, values=readings(T0, [1.0], step=HOUR)),
        energy.shenzhen.caller,
    )
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await energy.count("series_value") == 12


async def test_series_values_travel_the_bulk_path_of_readings(energy: Energy) -> None:
    meter = await energy.meter()
    traffic = await create_series(energy, name="traffic_tb", unit_label="TB", aggregation=pb.SERIES_AGGREGATION_SUM)
    messages = [
        pb.UploadReadingsRequest(meter_id=meter.meter_id, readings=readings(T0, [10.0] * 4)),
        pb.UploadReadingsRequest(series_id=traffic.series_id, readings=readings(T0, [1.5, 2.5], step=86_400)),
        pb.UploadReadingsRequest(series_id=traffic.series_id, readings=readings(T0 + 2 * DAY_TD, [-1.0], step=86_400)),
        pb.UploadReadingsRequest(meter_id=meter.meter_id, series_id=traffic.series_id, readings=readings(T0, [1.0])),
        pb.UploadReadingsRequest(series_id=traffic.series_id, readings=readings(T0, [1.5, 2.5], step=86_400)),
    ]

    async def stream() -> AsyncIterator[pb.UploadReadingsRequest]:
        for message in messages:
            yield message

    summary = await energy.stub.UploadReadings(
        stream(), metadata=energy.data_center.caller.metadata(energy.key), timeout=30
    )
    assert (summary.messages, summary.received, summary.inserted, summary.unchanged) == (5, 10, 6, 2)
    assert summary.rejected == 2
    problems = {p.message_index: p for p in summary.problems}
    assert problems[2].series_id == traffic.series_id and problems[2].code == "INVALID_ARGUMENT"
    assert [f.field for f in problems[2].field_problems] == ["readings[0].value"]
    assert [f.field for f in problems[3].field_problems] == ["meter_id"]
    assert await energy.count("series_value") == 2 and await energy.count("reading") == 4
