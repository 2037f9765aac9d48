"""`greenmesh loadgen` against a real `greenmesh up`: a small province, a short load, and its self-check; plus the
self-check's bookkeeping and the battery lives on their own."""

from __future__ import annotations

import datetime as dt
import json
import random
import signal
import subprocess
from pathlib import Path

import pytest

from greenmesh.flows.v1 import flows_pb2 as fpb
from greenmesh_cli.loadgen_check import verdict
from greenmesh_cli.loadgen_network import KINDS, Enterprise, Model, Network, Site, site_counts
from greenmesh_cli.loadgen_traffic import Ledger, Province, plan_life
from meshkit.localinfra import free_port
from tests.foundation.test_cli import clean_env, run_cli, start_up, wait_for_mesh

COMPONENTS = {"nats", "registry", "flows", "energy", "gateway"}


@pytest.mark.slow
def test_loadgen_sends_a_province_and_finds_every_acknowledged_event_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "mesh"
    env = clean_env(data_dir, GREENMESH_HTTP_PORT=str(free_port()))
    up = start_up(env)
    try:
        wait_for_mesh(up, data_dir)
        report_file = tmp_path / "loadgen.json"
        result = run_cli(
            "loadgen", "--facilities", "30", "--rate", "60", "--events", "500", "--retry-share", "0.05",
            "--readings-share", "0.1", "--settle-timeout", "30", "--sample-every", "1", "--json", str(report_file),
            env=env, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        report = json.loads(report_file.read_text(encoding="utf-8"))
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
            raise

    network, load, check = report["network"], report["load"], report["check"]
    assert network["facilities"] == 30 and network["listed"] > 0 and network["meters"] > 0
    # Every new event was answered, and a valid life is accepted whole: nothing rejected or quarantined.
    assert load["sent"] == 500
    assert 0 < load["acknowledged"] == load["outcomes"].get("ACCEPTED", 0)
    assert load["rejected"]["total"] == 0 and load["quarantined"]["total"] == 0, load
    assert load["unary_events"] > 0 and load["batch_events"] > 0
    assert {"COMMISSIONING", "RETAIL_SELLING", "COLLECTING", "SHIPPING", "RECEIVING"} <= set(load["steps"])
    # Deliberate retries of acknowledged events answer DUPLICATE and are not counted again.
    assert load["retries"]["sent"] > 0
    assert load["retries"]["duplicate"] == load["retries"]["sent"], load["retries"]
    assert load["readings"]["sent"] > 0 and load["readings"]["acknowledged"] == load["readings"]["sent"]
    # The self-check: each acknowledged event once in the store and once in the stream.
    assert check["ok"] is True, check["problems"]
    assert check["lost"] == 0 and check["duplicated"] == 0 and check["phantom"] == 0
    assert check["acknowledged"] == load["acknowledged"]
    assert check["store"]["found"] == check["stream"]["found"] == load["acknowledged"]
    assert check["readings"]["found"] == load["readings"]["acknowledged"]
    assert report["exit_status"] == 0
    # The mesh's processes were found and sampled at the start and end of the load.
    assert set(report["processes"]["load_start"]) == set(report["processes"]["load_end"]) == COMPONENTS
    assert all(sample["rss_mib"] > 0 for sample in report["processes"]["load_end"].values())
    # ... and every --sample-every seconds in between, so that a leak shows as a trend.
    during = report["processes"]["during_load"]
    assert len(during) >= 2 and all(set(s["processes"]) == COMPONENTS for s in during), during
    assert [s["at_seconds"] for s in during] == sorted(s["at_seconds"] for s in during)


def test_the_self_check_counts_lost_duplicated_and_phantom_events() -> None:
    ledger = Ledger()
    ledger.record(
        [
            ("a", fpb.EVENT_OUTCOME_ACCEPTED, ""),  # found once in each: fine
            ("b", fpb.EVENT_OUTCOME_ACCEPTED, ""),  # missing from the stream: lost
            ("c", fpb.EVENT_OUTCOME_QUARANTINED, "FLOW-005"),  # twice in the stream: duplicated
            ("d", fpb.EVENT_OUTCOME_REJECTED, "FLOW-015"),  # refused, yet stored: phantom
            ("e", fpb.EVENT_OUTCOME_DUPLICATE, ""),  # stored by an attempt that failed in transit: fine
        ]
    )
    assert ledger.mark("store_n", ["a", "b", "c", "d", "e", "not-ours"]) == 4
    assert ledger.mark("stream_n", ["a", "c", "c", "e"]) == 3
    assert ledger.mark("stream_n", ["c"]) == 0  # seen before
    found = verdict(ledger)
    assert found["acknowledged"] == 4
    assert (found["lost"], found["lost_in_store"], found["lost_in_stream"]) == (1, 0, 1)
    assert found["duplicated"] == found["duplicated_in_stream"] == 1
    assert found["phantom"] == 1
    assert found["samples"] == {"lost": ["b"], "duplicated": ["c"], "phantom": ["d"]}


def _network() -> Network:
    sites: dict[str, list[Site]] = {kind.name: [] for kind in KINDS}
    enterprises = []
    for kind in KINDS:
        for number in range(3):
            enterprise = Enterprise(kind.name, f"{kind.name}-{number}", f"CODE{kind.name}{number}", "key")
            site = Site(f"{kind.name}-site-{number}", kind.name, f"32010{number}", enterprise)
            enterprise.sites.append(site)
            sites[kind.name].append(site)
            enterprises.append(enterprise)
    models = {site.operator.participant_id: [Model("model-1", 9.5)] for site in sites["producer"]}
    return Network("32", "platform", None, None, enterprises, sites, models, [])  # type: ignore[arg-type]


def test_battery_lives_are_in_the_past_in_order_and_reported_by_each_site_s_operator() -> None:
    province = Province(_network())
    rng = random.Random(7)
    now = dt.datetime.now(dt.UTC)
    fates = set()
    for number in range(300):
        battery, fate = plan_life(province, f"SN{number:06d}", rng, now)
        fates.add(fate)
        times = [step.when for step in battery.plan]
        assert times == sorted(times) and times[-1] < now
        assert battery.plan[0].step == fpb.BIZ_STEP_COMMISSIONING
        steps = [step.step for step in battery.plan]
        if fate == "recycled":
            assert steps[-1] == fpb.BIZ_STEP_RECYCLING and fpb.BIZ_STEP_COLLECTING in steps
            # every shipment is followed by its receipt at the destination, from the sender
            for shipped, received in zip(battery.plan, battery.plan[1:], strict=False):
                if shipped.step == fpb.BIZ_STEP_SHIPPING:
                    assert received.step == fpb.BIZ_STEP_RECEIVING
                    assert received.site.facility_id == shipped.extra["destination_facility_id"]
                    assert received.extra["source_facility_id"] == shipped.site.facility_id
        else:
            assert steps[-1] == fpb.BIZ_STEP_RETAIL_SELLING
        event, planned = battery.event()
        assert event.facility_id == planned.site.facility_id and event.batteries[0].value == f"SN{number:06d}"
    assert fates == {"recycled", "in use"}


def test_a_province_has_every_kind_of_site() -> None:
    counts = site_counts(1000)
    assert sum(counts.values()) == 1000
    assert counts["outlet"] > counts["dealer"] > counts["storage"] > counts["sorter"] >= counts["recycler"] >= 2
    assert counts["producer"] >= 2 and counts["datacenter"] >= 1
    with pytest.raises(ValueError, match="at least"):
        site_counts(10)
