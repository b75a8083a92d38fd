"""The installed wheel: one top-level package, `harness`, whatever the checkout's folder layout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from harness.names import DIST_NAME

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    # A copy of the tracked tree, so the build leaves no build/ or egg-info behind in the checkout.
    tree = out / "tree"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        src, dst = ROOT / name, tree / name
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
    cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", out, tree]
    subprocess.run(cmd, check=True, capture_output=True)
    (path,) = out.glob("*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_installs_only_the_harness_package(wheel: zipfile.ZipFile) -> None:
    top = {name.split("/", 1)[0] for name in wheel.namelist()}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert top - dist_info == {"harness"}
    assert dist_info == {f"{DIST_NAME.replace('-', '_')}-{__import__('harness').__version__}.dist-info"}
    names = set(wheel.namelist())
    for module in ("backends/cpu_reference.py", "backends/cuda/backend.py", "backends/ascend/sim.py", "models/llm.py"):
        assert f"harness/{module}" in names, module


def test_every_entry_point_of_the_wheel_names_a_module_inside_it(wheel: zipfile.ZipFile) -> None:
    (ep_file,) = (n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))
    values = [
        line.split("=", 1)[1].strip()
        for line in wheel.read(ep_file).decode().splitlines()
        if "=" in line and not line.startswith("[")
    ]
    assert values
    names = set(wheel.namelist())
    for value in values:
        module = value.split(":", 1)[0]
        assert module.startswith("harness"), value
        path = module.replace(".", "/")
        assert f"{path}.py" in names or f"{path}/__init__.py" in names, value


def test_the_wheel_ships_no_planted_fault(wheel: zipfile.ZipFile) -> None:
    """Planted faults (backends named bug-*) belong to the selftest's own plugin (faults/), not the product."""
    sources = {n: wheel.read(n).decode() for n in wheel.namelist() if n.endswith(".py")}
    assert not [n for n, text in sources.items() if 'name: ClassVar[str] = "bug-' in text]
    assert not [n for n in wheel.namelist() if "harness_faults" in n or n.endswith("faults.py")]
