"""The conda env files agree with each other and with pyproject.toml, cover every rule, and
(in CI) pin exactly the versions the tests run with.

Only the last check depends on the interpreter and packages that happen to be installed, so
it runs where those are the tested install (CI, or SCAE_CHECK_PINS=1); the rest hold on any
Python the project supports. Needs only pytest, PyYAML and packaging (``--noconftest`` lets
CI run this file in a bare venv of another Python).
"""

import os
import re
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
#: conda-forge package name → the Python distribution it installs.
CONDA_TO_PIP = {
    "pytorch": "torch",
    "matplotlib-base": "matplotlib",
    "python-igraph": "igraph",
    "pyyaml": "PyYAML",
}
ENV_FILES = sorted((REPO / "envs").glob("*.yaml"))
CHECK_INSTALLED = bool(os.environ.get("CI") or os.environ.get("SCAE_CHECK_PINS"))


def pins(path: Path) -> dict[str, str]:
    """conda package → pinned version of one env file (every dependency must be pinned)."""
    spec = yaml.safe_load(path.read_text())
    assert spec["channels"] == ["conda-forge", "nodefaults"], path.name
    result = {}
    for dependency in spec["dependencies"]:
        name, _, pinned = str(dependency).partition("=")
        assert pinned, f"{path.name}: {name} is not pinned"
        result[name] = pinned
    return result


def pyproject() -> tuple[SpecifierSet, dict[str, SpecifierSet]]:
    """(requires-python, distribution → version range) of pyproject.toml's dependencies."""
    text = (REPO / "pyproject.toml").read_text()
    python = SpecifierSet(re.search(r'^requires-python = "([^"]+)"', text, re.M).group(1))
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.M | re.S).group(1)
    ranges = {}
    for line in block.splitlines():
        line = line.split("#")[0].strip().rstrip(",").strip('"')
        if line:
            requirement = Requirement(line)
            ranges[requirement.name.lower()] = requirement.specifier
    return python, ranges


def disagreements(files: dict[str, dict[str, str]]) -> list[str]:
    """Packages pinned to different versions in different env files."""
    seen: dict[str, tuple[str, str]] = {}
    problems = []
    for env, pinned in files.items():
        for name, value in pinned.items():
            if name in seen and seen[name][1] != value:
                problems.append(f"{name}: {seen[name][0]} pins {seen[name][1]}, {env} {value}")
            seen.setdefault(name, (env, value))
    return problems


def outside_ranges(
    pinned: dict[str, str], python: SpecifierSet, ranges: dict[str, SpecifierSet]
) -> list[str]:
    """Pins that pyproject.toml's ranges (or requires-python) exclude."""
    problems = []
    for name, value in pinned.items():
        if name == "python":
            if Version(value) not in python:
                problems.append(f"python={value} is outside requires-python {python}")
            continue
        distribution = CONDA_TO_PIP.get(name, name).lower()
        if distribution in ranges and Version(value) not in ranges[distribution]:
            problems.append(
                f"{name}={value} is outside pyproject's {distribution}{ranges[distribution]}"
            )
    return problems


def test_env_files_agree_with_each_other():
    files = {env.name: pins(env) for env in ENV_FILES}
    assert len(files) >= 2 and all("python" in pinned for pinned in files.values())
    assert disagreements(files) == []


@pytest.mark.parametrize("env", ENV_FILES, ids=lambda p: p.name)
def test_pins_lie_in_pyproject_ranges(env):
    python, ranges = pyproject()
    assert {"torch", "anndata", "scanpy"} <= set(ranges)  # the parse found the real list
    assert outside_ranges(pins(env), python, ranges) == []


def test_the_comparisons_catch_what_they_name():
    python, ranges = (
        SpecifierSet(">=3.10"),
        {"torch": SpecifierSet(">=2.4"), "igraph": SpecifierSet(">=0.11")},
    )
    assert outside_ranges(
        {"python": "3.9", "pytorch": "2.2.0", "python-igraph": "0.10.1", "h5py": "1.0"},
        python,
        ranges,
    ) == [
        "python=3.9 is outside requires-python >=3.10",
        "pytorch=2.2.0 is outside pyproject's torch>=2.4",
        "python-igraph=0.10.1 is outside pyproject's igraph>=0.11",
    ]
    assert outside_ranges({"python": "3.13", "pytorch": "2.13.0"}, python, ranges) == []
    assert disagreements(
        {
            "a.yaml": {"numpy": "2.4.6", "python": "3.11"},
            "b.yaml": {"numpy": "2.4.5", "python": "3.11"},
        }
    ) == ["numpy: a.yaml pins 2.4.6, b.yaml 2.4.5"]


@pytest.mark.skipif(
    not CHECK_INSTALLED,
    reason="pins are compared with the installed versions in CI only "
    "(set CI=1 or SCAE_CHECK_PINS=1)",
)
@pytest.mark.parametrize("env", ENV_FILES, ids=lambda p: p.name)
def test_pins_equal_the_tested_install(env):
    for name, pinned in pins(env).items():
        if name == "python":
            assert pinned == f"{sys.version_info.major}.{sys.version_info.minor}"
            continue
        installed = version(CONDA_TO_PIP.get(name, name)).split("+")[0]  # 2.13.0+cpu → 2.13.0
        assert installed == pinned, f"{env.name}: {name}={pinned} but tests run {installed}"


def test_every_rule_names_an_existing_env():
    rules = "".join(p.read_text() for p in (REPO / "rules").glob("*.smk"))
    n_rules = len(re.findall(r"^\s*rule \w+:", rules, flags=re.M))  # rules under an if too
    envs = re.findall(r'conda:\s*\n\s*"\.\./(envs/[\w.]+)"', rules)
    assert len(envs) == n_rules
    assert all((REPO / env).exists() for env in envs)


def test_the_gpu_kit_pins_what_the_envs_and_the_bench_extra_pin():
    """bench/device_requirements.txt installs the GPU check's stack on the device machine: the
    same versions as the envs (conda names mapped to pip's) and pyproject's `bench` extra."""
    kit = {}
    for line in (REPO / "bench" / "device_requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, pinned = line.partition("==")
            assert pinned, f"bench/device_requirements.txt: {name} is not pinned"
            kit[name.lower()] = pinned
    expected = {
        CONDA_TO_PIP.get(name, name).lower(): value
        for env in ENV_FILES
        for name, value in pins(env).items()
    }
    extra = re.search(r"^bench = \[(.*?)\]", (REPO / "pyproject.toml").read_text(), re.M)
    for entry in re.findall(r'"([^"]+)"', extra.group(1)):
        name, _, pinned = entry.partition("==")
        expected[name.lower()] = pinned
    assert "scvi-tools" in kit and "anndata" in kit
    assert {
        name: (value, expected.get(name))
        for name, value in kit.items()
        if expected.get(name) != value
    } == {}
