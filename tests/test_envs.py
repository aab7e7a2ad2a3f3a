"""The conda env files pin exactly the versions the tests run with, and cover every rule."""

import re
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
#: conda-forge package name → the Python distribution it installs.
CONDA_TO_PIP = {"pytorch": "torch", "matplotlib-base": "matplotlib", "python-igraph": "igraph"}
ENV_FILES = sorted((REPO / "envs").glob("*.yaml"))


def pins(path: Path) -> dict[str, str]:
    spec = yaml.safe_load(path.read_text())
    assert spec["channels"] == ["conda-forge", "nodefaults"], path.name
    result = {}
    for dependency in spec["dependencies"]:
        name, _, pinned = str(dependency).partition("=")
        assert pinned, f"{path.name}: {name} is not pinned"
        result[name] = pinned
    return result


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
    n_rules = len(re.findall(r"^rule \w+:", rules, flags=re.M))
    envs = re.findall(r'conda:\s*\n\s*"\.\./(envs/[\w.]+)"', rules)
    assert len(envs) == n_rules
    assert all((REPO / env).exists() for env in envs)
