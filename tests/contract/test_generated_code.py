"""Contract checks for the protos and the committed generated code under gen/."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

REPO_ROOT = Path(__file__).resolve().parents[2]
GEN_DIR = REPO_ROOT / "gen"
GEN_PROTOS = REPO_ROOT / "scripts" / "gen_protos.py"
BUF_LINT = REPO_ROOT / "scripts" / "buf_lint.py"
# The trees gen_protos.py owns below its output directory.
OWNED_TREES = (Path("python") / "greenmesh", Path("descriptors"))
REGENERATE_HINT = "run `python scripts/gen_protos.py` and commit gen/"


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def _snapshot(out_dir: Path) -> dict[str, bytes]:
    """Relative path -> content of every generated file (bytecode caches aside)."""
    files: dict[str, bytes] = {}
    for tree in OWNED_TREES:
        for path in (out_dir / tree).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                files[path.relative_to(out_dir).as_posix()] = path.read_bytes()
    return files


def test_committed_gen_tree_matches_a_fresh_generation(tmp_path: Path) -> None:
    result = _run(GEN_PROTOS, "--out", tmp_path)
    assert result.returncode == 0, f"gen_protos.py failed:\n{result.stdout}{result.stderr}"

    fresh = _snapshot(tmp_path)
    committed = _snapshot(GEN_DIR)
    assert fresh, "gen_protos.py --out produced no files"

    problems = [f"  missing: gen/{name}" for name in sorted(fresh.keys() - committed.keys())]
    problems += [f"  stale (no longer generated): gen/{name}" for name in sorted(committed.keys() - fresh.keys())]
    problems += [
        f"  differs: gen/{name}" for name in sorted(fresh.keys() & committed.keys()) if fresh[name] != committed[name]
    ]
    assert not problems, (
        "gen/ is out of date with protos/ (or with the generator versions):\n"
        + "\n".join(problems)
        + f"\n{REGENERATE_HINT}"
    )


def test_buf_lint_passes() -> None:
    result = _run(BUF_LINT)
    assert result.returncode == 0, f"buf lint failed:\n{result.stdout}{result.stderr}"


def test_buf_lint_reports_violations(tmp_path: Path) -> None:
    # Guards the buf.yaml setup itself: a config that lints nothing would let the test above pass.
    shutil.copytree(REPO_ROOT / "protos", tmp_path / "protos")
    shutil.copytree(
        REPO_ROOT / "scripts",
        tmp_path / "scripts",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copy2(REPO_ROOT / "buf.yaml", tmp_path / "buf.yaml")
    bad = tmp_path / "protos" / "greenmesh" / "mesh" / "v1" / "lint_canary.proto"
    bad.write_text(
        'syntax = "proto3";\n'
        "package greenmesh.mesh.v1;\n"
        "enum canary_state { CANARY = 0; }\n"  # ENUM_PASCAL_CASE, ENUM_VALUE_PREFIX, ...
    )

    result = _run(tmp_path / "scripts" / "buf_lint.py")

    assert result.returncode != 0, f"buf lint accepted a bad proto:\n{result.stdout}{result.stderr}"
    assert "lint_canary.proto" in result.stdout + result.stderr
    # Only the canary is reported: the google/api deps stay excluded from lint.
    assert "google/api" not in result.stdout + result.stderr


def test_generated_modules_import_and_are_typed() -> None:
    package_root = GEN_DIR / "python" / "greenmesh"
    modules = sorted(package_root.rglob("*_pb2*.py"))
    assert modules, "no generated modules under gen/python/greenmesh"
    for module_path in modules:
        assert module_path.with_suffix(".pyi").is_file(), f"no mypy stub for {module_path}"
        name = ".".join(module_path.relative_to(package_root.parent).with_suffix("").parts)
        module = importlib.import_module(name)
        # The editable install must map `greenmesh` to this tree, not to some other copy.
        assert Path(str(module.__file__)).resolve() == module_path.resolve()

    for directory in [package_root, *(p for p in package_root.rglob("*") if p.is_dir())]:
        if directory.name != "__pycache__":
            assert (directory / "__init__.py").is_file(), f"{directory} is not a package"
    assert (package_root / "py.typed").is_file()

    status_grpc_stub = (package_root / "mesh" / "v1" / "status_pb2_grpc.pyi").read_text()
    assert "class MeshStatusServiceAsyncStub" in status_grpc_stub  # grpc.aio stubs


def test_descriptor_set_carries_http_annotations() -> None:
    # By name: googleapis-common-protos has .pyi stubs but no py.typed, so a plain import
    # fails mypy --strict. Importing it also registers the extension for parsing below.
    annotations_pb2 = importlib.import_module("google.api.annotations_pb2")
    descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(
        (GEN_DIR / "descriptors" / "greenmesh.binpb").read_bytes()
    )
    files = {file.name: file for file in descriptor_set.file}
    # --include_imports: the gateway needs the imported files to build a descriptor pool.
    assert {"google/api/http.proto", "google/protobuf/timestamp.proto"} <= files.keys()

    status = files["greenmesh/mesh/v1/status.proto"]
    assert status.HasField("source_code_info")  # --include_source_info
    (service,) = [s for s in status.service if s.name == "MeshStatusService"]
    (method,) = [m for m in service.method if m.name == "GetMeshStatus"]
    assert method.options.HasExtension(annotations_pb2.http)
    rule = method.options.Extensions[annotations_pb2.http]
    assert rule.WhichOneof("pattern") == "get"
    assert rule.get == "/v1/mesh/status"
