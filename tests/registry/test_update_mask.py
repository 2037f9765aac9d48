"""The registry's reading of an update mask (pure)."""

from __future__ import annotations

from services.registry.domain.rules import update_mask_paths

UPDATABLE = frozenset({"name", "location", "phone"})
IDS = frozenset({"facility_id"})


def test_the_id_and_version_are_not_changes() -> None:
    assert update_mask_paths(["facility_id", "version", "name"], UPDATABLE, IDS) == (["name"], [])


def test_sub_paths_of_updatable_fields_are_kept_once_in_order() -> None:
    paths, problems = update_mask_paths(["location.latitude", "phone", "location.latitude"], UPDATABLE, IDS)
    assert (paths, problems) == (["location.latitude", "phone"], [])


def test_anything_else_is_a_violation_naming_it() -> None:
    paths, problems = update_mask_paths(["name", "operator_id", "status.x"], UPDATABLE, IDS)
    assert paths == []
    assert len(problems) == 1 and problems[0].field == "update_mask"
    assert "operator_id" in problems[0].description and "status.x" in problems[0].description


def test_an_empty_mask_or_only_identifiers_is_a_violation() -> None:
    assert update_mask_paths([], UPDATABLE, IDS)[1]
    assert update_mask_paths(["version", "facility_id"], UPDATABLE, IDS)[1]
