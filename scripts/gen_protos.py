"""Regenerate the Python code and .pyi stubs for protos/wgs/v1 into wgs/v1.

Usage: python scripts/gen_protos.py [--check]

--check regenerates into a temporary directory and fails if the committed
files differ (CI runs it so generated code is never stale).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_PACKAGE = ROOT / "wgs" / "v1"


def generate(out_root: Path) -> list[Path]:
    """Run protoc for every proto of wgs.v1; returns the generated files."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "wgs" / "v1").glob("*.proto"))
    grpc_include = Path(protoc.__file__).parent / "_proto"
    plugin_dir = Path(sys.executable).parent
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{grpc_include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--plugin=protoc-gen-mypy_grpc={plugin_dir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_grpc_out={out_root}",
        *protos,
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    out_pkg = out_root / "wgs" / "v1"
    (out_pkg / "__init__.py").write_text('"""Generated protobuf and gRPC code for wgs.v1 (do not edit)."""\n')
    return sorted(out_pkg.iterdir())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if committed code is stale")
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
        if ns.check:
            stale = []
            names = {f.name for f in files}
            existing = {p.name for p in OUT_PACKAGE.glob("*") if p.is_file()}
            for f in files:
                target = OUT_PACKAGE / f.name
                if not target.exists() or not filecmp.cmp(f, target, shallow=False):
                    stale.append(f.name)
            stale += sorted(existing - names)
            if stale:
                print(
                    "generated protobuf code is stale: " + ", ".join(sorted(stale))
                    + "\nrun: python scripts/gen_protos.py",
                    file=sys.stderr,
                )
                return 1
            print("generated protobuf code is fresh")
            return 0
        OUT_PACKAGE.mkdir(parents=True, exist_ok=True)
        for old in OUT_PACKAGE.glob("*"):
            if old.is_file():
                old.unlink()
        for f in files:
            shutil.copy2(f, OUT_PACKAGE / f.name)
        print(f"wrote {len(files)} files to {OUT_PACKAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
