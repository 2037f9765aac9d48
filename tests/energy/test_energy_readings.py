"""Readings over gRPC on SQLite and PostgreSQL: the idempotent upsert on (meter, start, end), quality flags stored
with the readings, rejected batches that leave the store unchanged, the client-streaming upload with its summary,
and operating-state intervals."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import grpc

from greenmesh.energy.v1 import energy_pb2 as pb
from tests.energy.conftest import T0, Energy, has_violation, kw, readings, ts
from tests.registry.conftest import JIANGSU_REGULATOR

FLAG = pb.QualityFlag


async def stored(energy: Energy, meter: pb.Meter) -> list[pb.Reading]:
    reply = await energy.call(
        "ListReadings", pb.ListReadingsRequest(meter_id=meter.meter_id, page_size=500), energy.data_center.caller
    )
    return list(reply.readings)


async def test_re_ingesting_the_same_readings_changes_nothing_and_flags_are_kept(energy: Energy) -> None:
    # 100 kW at most: a 15-minute interval holds at most 25 kWh, 27.5 with the 10 % headroom.
    meter = await energy.meter(rated_max=kw(100))
    values = [10.0, 11.0, 30.0, 12.0, *([9.0] * 8), 13.0]
    batch = readings(T0, values, estimated=[3])
    first = await energy.upsert(meter, batch)
    assert (first.inserted, first.updated, first.unchanged) == (13, 0, 0)
    assert first.flagged == 3  # out of range, estimated, the 8th identical value
    rows = await stored(energy, meter)
    assert [r.value for r in rows] == values
    assert list(rows[2].flags) == [FLAG.QUALITY_FLAG_OUT_OF_RANGE]
    assert list(rows[3].flags) == [FLAG.QUALITY_FLAG_ESTIMATED] and rows[3].estimated
    assert list(rows[11].flags) == [FLAG.QUALITY_FLAG_STUCK]
    assert all(r.HasField("consumption") and r.consumption == r.value for r in rows)

    again = await energy.upsert(meter, batch)
    assert (again.inserted, again.updated, again.unchanged, again.flagged) == (0, 0, 13, 0)
    assert await stored(energy, meter) == rows
    # Half of it again, in another order, and one corrected value: one update, nothing else moves.
    corrected = readings(T0, [10.0, 11.0, 20.0])
    partial = await energy.upsert(meter, [corrected[2], *batch[5:9], corrected[0]])
    assert (partial.inserted, partial.updated, partial.unchanged) == (0, 1, 5)
    after = await stored(energy, meter)
    assert after[2].value == 20.0 and list(after[2].flags) == []
    assert after[:2] == rows[:2] and after[3:] == rows[3:]


async def test_cumulative_registers_give_deltas_rollovers_and_negative_deltas(energy: Energy) -> None:
    meter = await energy.meter(
        mode=pb.READING_MODE_CUMULATIVE, register_max=100_000, rated_max=kw(200), role=pb.METER_ROLE_INPUT
    )
    reply = await energy.upsert(meter, readings(T0, [99_950.0, 99_990.0, 20.0, 10.0, 30.0]))
    assert reply.inserted == 5
    rows = await stored(energy, meter)
    assert not rows[0].HasField("consumption")  # no previous reading: no delta
    assert rows[1].consumption == 40.0
    assert list(rows[2].flags) == [FLAG.QUALITY_FLAG_ROLLOVER] and rows[2].consumption == 30.0
    assert list(rows[3].flags) == [FLAG.QUALITY_FLAG_NEGATIVE_DELTA] and not rows[3].HasField("consumption")
    assert rows[4].consumption == 20.0
    # The next batch continues from the stored register: its first delta uses the last stored reading.
    more = await energy.upsert(meter, readings(T0 + dt.timedelta(minutes=75), [45.0]))
    assert more.inserted == 1
    assert (await stored(energy, meter))[5].consumption == 15.0


async def test_a_rejected_batch_leaves_the_store_unchanged(energy: Energy) -> None:
    meter = await energy.meter()
    await energy.upsert(meter, readings(T0, [5.0, 6.0, 7.0]))
    before = await stored(energy, meter)
    count = await energy.count("reading")

    later = T0 + dt.timedelta(hours=1)
    good = readings(later, [1.0, 2.0, 3.0])
    overlapping = pb.Reading(
        start_time=ts(later + dt.timedelta(minutes=5)), end_time=ts(later + dt.timedelta(minutes=20)), value=1.0
    )
    error = await energy.refused(
        "UpsertReadings",
        pb.UpsertReadingsRequest(meter_id=meter.meter_id, readings=[*good, overlapping]),
        energy.data_center.caller,
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert has_violation(error, "readings[3]", "overlaps readings[0]")  # 15 minutes, but off the others' grid
    negative = await energy.refused(
        "UpsertReadings",
        pb.UpsertReadingsRequest(
            meter_id=meter.meter_id, readings=[*good, *readings(later + dt.timedelta(hours=1), [-4.0])]
        ),
        energy.data_center.caller,
    )
    assert has_violation(negative, "readings[3].value", "cannot be negative")
    # Against the stored readings: a reading shifted by 5 minutes overlaps two of them.
    shifted = pb.Reading(
        start_time=ts(T0 + dt.timedelta(minutes=5)), end_time=ts(T0 + dt.timedelta(minutes=20)), value=1.0
    )
    hourly = await energy.meter()
    error = await energy.refused(
        "UpsertReadings",
        pb.UpsertReadingsRequest(meter_id=meter.meter_id, readings=[shifted]),
        energy.data_center.caller,
    )
    assert has_violation(error, "readings[0]", "overlaps the stored reading")
    # The same key twice with different values; a reading with nanoseconds; an unknown meter.
    twice = readings(later, [1.0, 2.0])
    twice.append(readings(later, [9.0])[0])
    error = await energy.refused(
        "UpsertReadings", pb.UpsertReadingsRequest(meter_id=meter.meter_id, readings=twice), energy.data_center.caller
    )
    assert has_violation(error, "readings[2]", "another value")
    odd = readings(later, [1.0])
    odd[0].start_time.nanos = 5
    error = await energy.refused(
        "UpsertReadings", pb.UpsertReadingsRequest(meter_id=meter.meter_id, readings=odd), energy.data_center.caller
    )
    assert has_violation(error, "readings[0].start_time", "whole seconds")
    error = await energy.refused(
        "UpsertReadings", pb.UpsertReadingsRequest(meter_id="nope", readings=good), energy.data_center.caller
    )
    assert has_violation(error, "meter_id", "unknown meter")
    # Not the site's operator, nor a regulator.
    for caller in (energy.shenzhen.caller, JIANGSU_REGULATOR):
        denied = await energy.refused(
            "UpsertReadings", pb.UpsertReadingsRequest(meter_id=meter.meter_id, readings=good), caller
        )
        assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await energy.count("reading") == count
    assert await stored(energy, meter) == before
    assert (await stored(energy, hourly)) == []


async def test_upload_stream_stores_good_batches_and_reports_refused_ones(energy: Energy) -> None:
    facility = await energy.meter()
    it = await energy.meter(role=pb.METER_ROLE_IT_LOAD, it_measurement_point=pb.IT_MEASUREMENT_POINT_UPS_OUTPUT)
    day = [20.0 + (i % 4) for i in range(96)]
    bad = readings(T0 + dt.timedelta(days=3), [1.0, 2.0])
    bad[1].end_time.seconds += 60

    async def messages() -> AsyncIterator[pb.UploadReadingsRequest]:
        yield pb.UploadReadingsRequest(meter_id=facility.meter_id, readings=readings(T0, day))
        yield pb.UploadReadingsRequest(meter_id=it.meter_id, readings=readings(T0, [v * 0.7 for v in day]))
        yield pb.UploadReadingsRequest(meter_id=facility.meter_id, readings=bad)
        yield pb.UploadReadingsRequest(meter_id="unknown", readings=readings(T0, [1.0]))
        yield pb.UploadReadingsRequest(meter_id=facility.meter_id, readings=readings(T0, day))  # again: unchanged

    summary = await energy.stub.UploadReadings(
        messages(), metadata=energy.data_center.caller.metadata(energy.key), timeout=30
    )
    assert (summary.messages, summary.received) == (5, 96 * 3 + 3)
    assert (summary.inserted, summary.updated, summary.unchanged, summary.rejected) == (192, 0, 96, 3)
    assert [(p.message_index, p.code) for p in summary.problems] == [(2, "INVALID_ARGUMENT"), (3, "INVALID_ARGUMENT")]
    assert summary.problems[0].field_problems[0].field == "readings[1].end"
    assert summary.problems[1].field_problems[0].field == "meter_id"
    assert len(await stored(energy, facility)) == 96


async def test_operating_states_are_intervals_that_never_overlap(energy: Energy) -> None:
    asset = await energy.asset()
    states = [
        pb.OperatingStateInterval(
            state=pb.OPERATING_STATE_SELF_TEST, start_time=ts(T0), end_time=ts(T0 + dt.timedelta(hours=1))
        ),
        pb.OperatingStateInterval(
            state=pb.OPERATING_STATE_MODULE_HIBERNATION,
            start_time=ts(T0 + dt.timedelta(hours=2)),
            end_time=ts(T0 + dt.timedelta(hours=8)),
            awake_modules=2,
        ),
    ]
    request = pb.RecordOperatingStatesRequest(asset_id=asset.asset_id, intervals=states)
    first = await energy.call("RecordOperatingStates", request, energy.data_center.caller)
    assert (first.recorded, first.unchanged) == (2, 0)
    again = await energy.call("RecordOperatingStates", request, energy.data_center.caller)
    assert (again.recorded, again.unchanged) == (0, 2)
    overlap = pb.RecordOperatingStatesRequest(
        asset_id=asset.asset_id,
        intervals=[
            pb.OperatingStateInterval(
                state=pb.OPERATING_STATE_FAULT,
                start_time=ts(T0 + dt.timedelta(minutes=30)),
                end_time=ts(T0 + dt.timedelta(hours=3)),
            ),
            pb.OperatingStateInterval(
                state=pb.OPERATING_STATE_ONLINE,
                start_time=ts(T0 + dt.timedelta(hours=9)),
                end_time=ts(T0 + dt.timedelta(hours=10)),
                awake_modules=1,
            ),
        ],
    )
    error = await energy.refused("RecordOperatingStates", overlap, energy.data_center.caller)
    assert has_violation(error, "intervals[0]", "overlaps the stored SELF_TEST")
    assert has_violation(error, "intervals[1].awake_modules", "only for MODULE_HIBERNATION")
    listed = await energy.call(
        "ListOperatingStates", pb.ListOperatingStatesRequest(asset_id=asset.asset_id), JIANGSU_REGULATOR
    )
    assert list(listed.intervals) == states


async def test_readings_are_listed_in_pages_that_follow_on_and_honour_the_period(energy: Energy) -> None:
    meter = await energy.meter(rated_max=kw(100))
    values = [float(v) for v in range(1, 13)]
    await energy.upsert(meter, readings(T0, values))
    seen: list[float] = []
    token = ""
    while True:
        reply = await energy.call(
            "ListReadings",
            pb.ListReadingsRequest(meter_id=meter.meter_id, page_size=5, page_token=token),
            energy.data_center.caller,
        )
        assert len(reply.readings) <= 5
        seen += [r.value for r in reply.readings]
        token = reply.next_page_token
        if not token:
            break
    assert seen == values  # every reading once, in order, across three pages
    # A period starting at the 5th quarter-hour lists from there on.
    later = await energy.call(
        "ListReadings",
        pb.ListReadingsRequest(meter_id=meter.meter_id, page_size=50, start_time=ts(T0 + dt.timedelta(minutes=60))),
        energy.data_center.caller,
    )
    assert [r.value for r in later.readings] == values[4:]
