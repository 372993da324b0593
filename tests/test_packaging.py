"""What the distributions carry: the sdist, what its tests and the image build need; the wheel
(built from that sdist, as pip does), the packages, the licence text and the typing marker."""
from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _build(kind: str, source: Path, out: Path) -> Path:
    code = f"import setuptools.build_meta as b; print(b.build_{kind}({str(out)!r}))"
    done = subprocess.run([sys.executable, "-c", code], cwd=source, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return out / done.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_sdist_and_wheel_contents(tmp_path):
    sdist = _build("sdist", REPO, tmp_path)
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
        tar.extractall(tmp_path / "src", filter="data")
    # the tests' shared modules (without them: 8 collection errors), what tests run, the image build
    for needed in ("LICENSE", "tests/conftest.py", "tests/helpers.py", "tests/report_fixtures.py",
                   "tests/gpu_marks.py", "examples/serve.py", "benchmarks/gpu_check.sh", "Dockerfile.cuda",
                   "Makefile", ".ci/run", "engine/cli.py", "kernels/silhouette_triton.py"):
        assert needed in names, needed
    assert not any("__pycache__" in name for name in names)

    wheel = _build("wheel", tmp_path / "src" / sdist.name.removesuffix(".tar.gz"), tmp_path)
    with zipfile.ZipFile(wheel) as whl:
        files = set(whl.namelist())
    assert "engine/py.typed" in files and "kernels/silhouette_triton.py" in files
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in files)
    tracked = {p.relative_to(REPO).as_posix() for pkg in ("engine", "kernels") for p in (REPO / pkg).rglob("*.py")
               if "__pycache__" not in p.parts}
    assert tracked <= files  # every module ships
