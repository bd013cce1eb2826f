"""The install path is reproducible: CI and scripts/install.sh install from requirements/lock.txt, a lock of tested
versions that satisfies pyproject's ranges, so the suite does not depend on the day it is installed."""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]


def locked() -> dict[str, Version]:
    pins = {}
    for line in (REPO / "requirements" / "lock.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            assert pinned, f"lock line {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = Version(pinned)
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]


def test_the_lock_pins_every_declared_dependency_inside_its_range():
    pins = locked()
    for req in declared():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is declared in pyproject.toml but not pinned in requirements/lock.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"lock pins {name}=={pins[name]} outside {req}"


def test_declared_floors_are_the_tested_versions():
    """A floor below the locked version is a claim nobody tested (the issue that added this test found torch>=2.4
    and transformers>=4.46 while the code needed torch 2.6 and transformers 5.x APIs)."""
    pins = locked()
    for req in declared():
        floors = [Version(s.version) for s in req.specifier if s.operator == ">="]
        assert floors, f"{req} has no floor"
        locked_version = pins[canonicalize_name(req.name)]
        assert (floors[0].major, floors[0].minor) == (locked_version.major, locked_version.minor), (
            f"{req}: the floor is not the tested minor version {locked_version} (raise it, or test the floor)"
        )


def test_installed_direct_dependencies_are_the_locked_ones():
    """What the suite runs on is the lock (scripts/install.sh); a drift means the environment was installed
    another way, and results may then depend on the day."""
    pins = locked()
    drift = []
    for req in declared():
        name = canonicalize_name(req.name)
        try:
            installed = Version(version(req.name))
        except PackageNotFoundError:
            drift.append(f"{name} not installed")
            continue
        if Version(re.sub(r"\+.*", "", str(installed))) != pins[name]:
            drift.append(f"{name} {installed} (lock: {pins[name]})")
    assert not drift, f"installed versions differ from requirements/lock.txt: {drift}; run bash scripts/install.sh"


def test_install_and_ci_scripts_use_the_lock_and_the_cpu_torch_pin():
    install = (REPO / "scripts" / "install.sh").read_text()
    assert "-c requirements/lock.txt" in install and '"torch==2.13.0"' in install
    assert "torch==2.13.0" in (REPO / "requirements" / "lock.txt").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "bash scripts/install.sh" in ci and "python -m pytest -n 2 tests" in ci
    refresh = (REPO / "scripts" / "refresh_lock.sh").read_text()
    assert "pip freeze" in refresh and "pytest" in refresh


def test_the_package_carries_every_shipped_config():
    """`latentrl demo` / `bench` read their presets from the package (`latentrl.config.SHIPPED_CONFIGS`), so a
    non-editable install must carry them: every file there matches pyproject's package-data."""
    from latentrl.config import SHIPPED_CONFIGS

    package = REPO / "src" / "latentrl"
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["latentrl"]
    carried = {p for g in globs for p in package.glob(g) if p.is_file()}
    configs = {p for p in SHIPPED_CONFIGS.rglob("*") if p.is_file()}
    assert SHIPPED_CONFIGS.resolve().parent == package.resolve() and len(configs) > 20
    assert configs <= carried, sorted(str(p) for p in configs - carried)[:5]
    assert (REPO / "configs").resolve() == SHIPPED_CONFIGS.resolve()  # the documented configs/... paths


def test_documented_config_paths_work_outside_the_repository(tmp_path, monkeypatch):
    """`--config configs/cpu/grpo.yaml` from any folder finds the shipped preset; a file of that name in the
    working folder wins; other missing paths are still a clear error."""
    import pytest

    from latentrl.config import ConfigError, GRPOConfig, load_config

    monkeypatch.chdir(tmp_path)
    assert load_config(GRPOConfig, "configs/cpu/hrpo.yaml").method == "hrpo"
    (tmp_path / "configs" / "cpu").mkdir(parents=True)
    (tmp_path / "configs" / "cpu" / "hrpo.yaml").write_text("method: lepo\nmodel_name_or_path: m\n")
    assert load_config(GRPOConfig, "configs/cpu/hrpo.yaml").method == "lepo"
    with pytest.raises(ConfigError, match="Config file not found"):
        load_config(GRPOConfig, "configs/cpu/nope.yaml")
