"""The README tells a newcomer the truth: the two commands first, and every variable documented."""

from __future__ import annotations

import re
from pathlib import Path

from meshkit.config import ENV_PREFIX, MeshSettings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_starts_with_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    first_block = text.split("```", 2)[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:] if line.strip()]
    assert commands == ["make up", "make test"]


def test_every_setting_is_documented() -> None:
    text = README.read_text(encoding="utf-8")
    documented = set(re.findall(rf"`({ENV_PREFIX}[A-Z_]+)`", text))
    # The three service addresses share one row: GREENMESH_REGISTRY_ADDR / _FLOWS_ADDR / _ENERGY_ADDR.
    documented |= {f"{ENV_PREFIX}{name}_ADDR" for name in ("FLOWS", "ENERGY") if "_FLOWS_ADDR" in text}
    expected = {f"{ENV_PREFIX}{field.upper()}" for field in MeshSettings.model_fields}
    assert sorted(expected - documented) == []
