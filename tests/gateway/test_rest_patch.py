"""PATCH as grpc-gateway clients send it: the body's keys fill the update mask, the record's id and version
ride along, and a nested key changes only that part of a field."""

from __future__ import annotations

from tests.gateway.conftest import Mesh


async def test_a_patch_without_a_mask_changes_only_what_the_body_names(mesh: Mesh) -> None:
    outlet = mesh.network.outlet
    headers = {"Authorization": f"Bearer {mesh.keys.enterprise_a}"}
    before = (await mesh.http.get(f"/v1/facilities/{outlet.site}", headers=headers)).json()["facility"]
    changed = await mesh.http.patch(
        f"/v1/facilities/{outlet.site}",
        json={"location": {"latitude": 32.0761}, "openingHours": "08:30-18:00", "version": before["version"]},
        headers=headers,
    )
    assert changed.status_code == 200, changed.text
    after = changed.json()["facility"]
    assert after["location"] == {"latitude": 32.0761, "longitude": before["location"]["longitude"]}
    assert after["openingHours"] == "08:30-18:00"
    assert {k: v for k, v in after.items() if k not in {"location", "openingHours", "version", "updatedAt"}} == {
        k: v for k, v in before.items() if k not in {"location", "openingHours", "version", "updatedAt"}
    }
    assert int(after["version"]) == int(before["version"]) + 1
    # The same body again carries the old version: a conflict, and nothing changes.
    stale = await mesh.http.patch(
        f"/v1/facilities/{outlet.site}",
        json={"openingHours": "00:00-24:00", "version": before["version"]},
        headers=headers,
    )
    assert stale.status_code == 409, stale.text
    again = (await mesh.http.get(f"/v1/facilities/{outlet.site}", headers=headers)).json()["facility"]
    assert again["openingHours"] == "08:30-18:00"


async def test_a_participant_patch_without_a_mask(mesh: Mesh) -> None:
    outlet = mesh.network.outlet
    headers = {"Authorization": f"Bearer {mesh.keys.enterprise_a}"}
    current = (await mesh.http.get(f"/v1/participants/{outlet.id}", headers=headers)).json()["participant"]
    changed = await mesh.http.patch(
        f"/v1/participants/{outlet.id}",
        json={"shortName": "玄武回收", "version": current["version"]},
        headers=headers,
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["participant"]["shortName"] == "玄武回收"
    # A field the enterprise may not change is refused whatever else the body says.
    refused = await mesh.http.patch(
        f"/v1/participants/{outlet.id}",
        json={"roles": ["PARTICIPANT_ROLE_PLATFORM_OPERATOR"], "version": changed.json()["participant"]["version"]},
        headers=headers,
    )
    assert refused.status_code == 403, refused.text
