"""Write the gateway's OpenAPI document to tests/gateway/openapi.snapshot.json (or check that it is current).

tests/gateway/test_openapi.py fails when the document generated from the protos differs from the snapshot, so
that a change to the REST API shows up in review as a change to this file:

    python scripts/update_openapi_snapshot.py           # regenerate the snapshot after changing the protos
    python scripts/update_openapi_snapshot.py --check   # exit 1 when it is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gateway.openapi import greenmesh_openapi, render_json

REPO_ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = REPO_ROOT / "tests" / "gateway" / "openapi.snapshot.json"


def snapshot_text() -> str:
    return render_json(greenmesh_openapi())


def without_version(text: str) -> Any:
    """The document less `info.version`: a release does not make the snapshot stale."""
    document = json.loads(text)
    document.get("info", {}).pop("version", None)
    return document


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report whether the snapshot is current")
    args = parser.parse_args(argv)
    text = snapshot_text()
    current = SNAPSHOT.read_text(encoding="utf-8") if SNAPSHOT.exists() else None
    if args.check:
        if current is None or without_version(current) != without_version(text):
            print(f"{SNAPSHOT.relative_to(REPO_ROOT)} is stale: run python scripts/update_openapi_snapshot.py")
            return 1
        print(f"{SNAPSHOT.relative_to(REPO_ROOT)} is current")
        return 0
    if current == text:
        print(f"{SNAPSHOT.relative_to(REPO_ROOT)} unchanged")
        return 0
    SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
    SNAPSHOT.write_text(text, encoding="utf-8")
    print(f"wrote {SNAPSHOT.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
