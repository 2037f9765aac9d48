"""Every curl example in the README's gateway section, run as written against a real `greenmesh up`."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from meshkit.localinfra import free_port
from tests.foundation.test_cli import clean_env, start_up, wait_for_mesh

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_script() -> str:
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- readme-curl: begin -->\n```bash\n(.*?)```\n<!-- readme-curl: end -->", text, re.S)
    assert found is not None, "the README's curl examples are marked with readme-curl begin/end"
    return found.group(1)


def test_the_examples_use_curl_and_the_bootstrap_command() -> None:
    script = readme_script()
    assert script.count("curl ") >= 10
    assert "greenmesh credential bootstrap" in script


@pytest.mark.slow
def test_every_readme_curl_example_works_against_greenmesh_up(tmp_path: Path) -> None:
    data_dir = tmp_path / "mesh"
    env = clean_env(data_dir, GREENMESH_HTTP_PORT=str(free_port()))
    up = start_up(env)
    try:
        gateway = str(wait_for_mesh(up, data_dir)["gateway_http"])
        # The examples call .venv/bin/…, as a newcomer's checkout has it: point .venv at this interpreter's.
        workdir = tmp_path / "checkout"
        workdir.mkdir()
        (workdir / ".venv").symlink_to(Path(sys.prefix))
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", readme_script()],
            cwd=workdir,
            env={**env, "GW": gateway},
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(60)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert json.loads(lines[0]) == {"outlets": []}
    assert json.loads(lines[1])["status"] == "PUBLIC_BATTERY_STATUS_UNKNOWN_TO_PLATFORM"
    assert lines[2] == "401"
    platform_view = json.loads(lines[3])["participants"]
    assert [p["roles"] for p in platform_view] == [["PARTICIPANT_ROLE_PLATFORM_OPERATOR"]]
    activated = json.loads(lines[4])["participant"]
    assert activated["status"] == "PARTICIPANT_STATUS_ACTIVE"
    facility = json.loads(lines[5])["facility"]
    assert facility["operatorId"] == activated["participantId"]
    assert [p["participantId"] for p in json.loads(lines[6])["participants"]] == [activated["participantId"]]
    invalid = json.loads(lines[7])
    assert invalid["code"] == 3 and invalid["details"][0]["@type"].endswith("google.rpc.BadRequest")
    assert lines[8] == "400"
    assert json.loads(lines[9])["allServing"] is True
    assert lines[10] == "200 application/json"
