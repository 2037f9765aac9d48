"""Run `buf lint` (STANDARD rules, see buf.yaml) on protos/ without the Buf Schema Registry.

Our protos import google/api/*.proto. Instead of a BSR dependency in buf.lock we take those
files from the googleapis-common-protos wheel, the same copy gen_protos.py compiles against:
they are copied into build/proto-deps/, which buf.yaml declares as a second module that is
excluded from lint. google/protobuf/* well-known types are built into buf and are not copied.

    python scripts/buf_lint.py              # buf lint; exit status is buf's
    python scripts/buf_lint.py build        # any other buf command, with the deps in place
    python scripts/buf_lint.py format -d
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from google.protobuf import descriptor_pb2

if TYPE_CHECKING:
    from scripts import gen_protos  # the module name mypy (explicit_package_bases) gives it
else:
    import gen_protos  # `python scripts/buf_lint.py` puts scripts/ itself on sys.path

# Must match the second module path in buf.yaml; build/ is git-ignored.
DEPS_DIR = gen_protos.REPO_ROOT / "build" / "proto-deps"


def imported_dependencies() -> list[str]:
    """Import paths of the third-party protos that our protos need, transitively.

    protoc resolves the imports exactly as gen_protos.py does, so buf sees the same files.
    """
    with tempfile.TemporaryDirectory(prefix="buf_lint-") as scratch:
        descriptor_set = Path(scratch) / "deps.binpb"
        gen_protos.run_protoc(
            [
                *(f"--proto_path={directory}" for directory in gen_protos.include_dirs()),
                f"--descriptor_set_out={descriptor_set}",
                "--include_imports",
                *gen_protos.proto_files(),
            ]
        )
        files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    return sorted(
        proto.name
        for proto in files.file
        # Files under protos/ are the first buf module already; WKTs are built into buf.
        if not (gen_protos.PROTO_ROOT / proto.name).is_file() and not proto.name.startswith("google/protobuf/")
    )


def sync_deps() -> None:
    """Make DEPS_DIR hold exactly the needed dependency protos (stale ones are removed)."""
    source_root = gen_protos.googleapis_include_dir()
    wanted = {name: (source_root / name).read_bytes() for name in imported_dependencies()}
    DEPS_DIR.mkdir(parents=True, exist_ok=True)
    for existing in sorted(DEPS_DIR.rglob("*.proto")):
        if existing.relative_to(DEPS_DIR).as_posix() not in wanted:
            existing.unlink()
    for name, content in wanted.items():
        target = DEPS_DIR / name
        # Rewrite only on change: repeated or concurrent runs leave the tree untouched.
        if not target.is_file() or target.read_bytes() != content:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)


def main(argv: Sequence[str] | None = None) -> int:
    buf_args = list(sys.argv[1:] if argv is None else argv) or ["lint"]
    sync_deps()
    buf = gen_protos.find_venv_executable("buf", "buf-bin")
    # buf finds buf.yaml in its working directory.
    return subprocess.run([str(buf), *buf_args], cwd=gen_protos.REPO_ROOT, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
