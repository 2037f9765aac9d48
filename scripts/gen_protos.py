"""Generate the Python code and the descriptor set for every proto under protos/greenmesh.

This is the only way generated code is produced; tests/contract checks that the committed
gen/ tree equals what this script writes.

    python scripts/gen_protos.py            # regenerate gen/ in place
    python scripts/gen_protos.py --out DIR  # write DIR/python/... and DIR/descriptors/...
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "protos"
# Only protos under this directory are ours; everything else on the include path is a dependency.
OWN_PROTO_DIR = PROTO_ROOT / "greenmesh"
DEFAULT_OUT = REPO_ROOT / "gen"

# The trees below the output directory that this script owns and replaces wholesale.
PYTHON_PACKAGE = Path("python") / "greenmesh"
DESCRIPTOR_DIR = Path("descriptors")
DESCRIPTOR_SET = DESCRIPTOR_DIR / "greenmesh.binpb"


def _package_dirs(package: str) -> list[Path]:
    """Directories of an installed package, without importing it (works for namespace packages)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"gen_protos: Python package {package!r} is not installed")
    return [Path(location) for location in spec.submodule_search_locations]


def googleapis_include_dir() -> Path:
    """The site-packages directory holding google/api/*.proto of googleapis-common-protos."""
    # google.api is a namespace package (no __init__.py), so look at every portion of it.
    for api_dir in _package_dirs("google.api"):
        if (api_dir / "annotations.proto").is_file():
            return api_dir.parent.parent
    raise SystemExit("gen_protos: google/api/annotations.proto not found; install googleapis-common-protos")


def wkt_include_dir() -> Path:
    """grpc_tools' bundled copy of the google/protobuf well-known types."""
    # `python -m grpc_tools.protoc` adds this itself, but protoc.main() called in-process does not.
    for tools_dir in _package_dirs("grpc_tools"):
        proto_dir = tools_dir / "_proto"
        if (proto_dir / "google" / "protobuf" / "timestamp.proto").is_file():
            return proto_dir
    raise SystemExit("gen_protos: grpc_tools/_proto not found; install grpcio-tools")


def include_dirs() -> list[Path]:
    # Well-known types come before site-packages so they always match the bundled protoc.
    return [PROTO_ROOT, wkt_include_dir(), googleapis_include_dir()]


def find_venv_executable(name: str, provided_by: str) -> Path:
    """A console script (protoc plugin, buf) installed next to this interpreter.

    Passed around by explicit path so the scripts work without an activated venv.
    """
    for directory in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        for suffix in ("", ".exe"):
            candidate = directory / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found; install {provided_by}")
    return Path(found)


def proto_files() -> list[str]:
    """Every own proto, sorted by import path so the output does not depend on directory order.

    Absolute paths keep protoc independent of the working directory; it maps them back to import
    paths through --proto_path=protos/.
    """
    paths = sorted(OWN_PROTO_DIR.rglob("*.proto"), key=lambda path: path.relative_to(PROTO_ROOT).as_posix())
    return [str(path) for path in paths]


def run_protoc(args: Sequence[str]) -> None:
    # grpc_tools ships no type information; importing it by name keeps mypy --strict quiet
    # without a type: ignore that would turn stale once stubs exist.
    protoc = importlib.import_module("grpc_tools.protoc")
    # argv[0] is ignored by protoc but must be present.
    status: int = protoc.main(["grpc_tools.protoc", *args])
    if status != 0:
        raise SystemExit(f"gen_protos: protoc failed with exit status {status}")


def write_package_markers(python_dir: Path) -> None:
    """Make every generated directory a regular, typed package.

    protoc writes no __init__.py, and setuptools' find_packages() skips directories without
    one; py.typed (PEP 561) tells mypy to use the generated .pyi stubs of the installed package.
    """
    package_root = python_dir / "greenmesh"
    for directory in [package_root, *(path for path in package_root.rglob("*") if path.is_dir())]:
        (directory / "__init__.py").write_bytes(b"")
    (package_root / "py.typed").write_bytes(b"")


def generate_into(stage: Path, files: Sequence[str]) -> None:
    python_dir = stage / PYTHON_PACKAGE.parent
    descriptor_set = stage / DESCRIPTOR_SET
    python_dir.mkdir(parents=True)
    descriptor_set.parent.mkdir(parents=True)
    mypy_plugin = find_venv_executable("protoc-gen-mypy", "mypy-protobuf")
    mypy_grpc_plugin = find_venv_executable("protoc-gen-mypy_grpc", "mypy-protobuf")
    run_protoc(
        [
            *(f"--proto_path={directory}" for directory in include_dirs()),
            f"--plugin=protoc-gen-mypy={mypy_plugin}",
            f"--plugin=protoc-gen-mypy_grpc={mypy_grpc_plugin}",
            f"--python_out={python_dir}",
            f"--grpc_python_out={python_dir}",
            # quiet: mypy-protobuf otherwise logs every stub it writes to stderr.
            f"--mypy_out=quiet:{python_dir}",
            f"--mypy_grpc_out=quiet:{python_dir}",
            # Imports and comments are kept so the gateway can resolve google.api.http options
            # (and document routes) from this one file.
            f"--descriptor_set_out={descriptor_set}",
            "--include_imports",
            "--include_source_info",
            *files,
        ]
    )
    write_package_markers(python_dir)


def replace_tree(source: Path, target: Path) -> None:
    """Swap target for source, so protos that were removed leave no stale modules behind."""
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(source, target)


def generate(out: Path) -> None:
    files = proto_files()
    if not files:
        raise SystemExit(f"gen_protos: no .proto files under {OWN_PROTO_DIR}")
    out = out.resolve()
    # Generate into a scratch directory first: a protoc error leaves the existing tree untouched.
    with tempfile.TemporaryDirectory(prefix="gen_protos-") as scratch:
        stage = Path(scratch)
        generate_into(stage, files)
        for owned in (PYTHON_PACKAGE, DESCRIPTOR_DIR):
            replace_tree(stage / owned, out / owned)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="output directory (default: gen/ in the repository); gets python/ and descriptors/",
    )
    args = parser.parse_args(argv)
    generate(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
