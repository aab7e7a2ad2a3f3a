"""``config/schema.yaml``, the one source of every setting's default, choices and limits.

The workflow validates its configuration against the schema (which fills in defaults); the
API's settings — :class:`scae.PreprocessParams`, :class:`scae.MCVParams`,
:class:`scae.train.TrainParams`, :class:`scae.module.network.ModelParams`,
:class:`scae.train.tune.TuneParams` and each loss's parameters in
:data:`scae.module.losses.LOSSES` — take theirs from the same file, so a default changed in
the schema changes for the API too. The package ships the file as ``scae/schema.yaml`` (a
link to ``config/schema.yaml`` in the repository, copied into a built wheel).

Only ``yaml`` and the standard library are imported: Snakemake's parse step reads it.
"""

from __future__ import annotations

import copy
import functools
from importlib.resources import files
from typing import Any

import yaml

from .config import RANGE_KEYWORDS


@functools.cache
def _parsed() -> dict:
    return yaml.safe_load(files("scae").joinpath("schema.yaml").read_text(encoding="utf-8"))


def _node(path: tuple[str, ...]) -> dict:
    node = _parsed()
    for key in path:
        node = node["properties"][key]
    return node


def properties(*path: str) -> dict[str, dict]:
    """Return the schema nodes of the keys under the config section ``path`` (a copy).

    ``properties("tune", "space")`` are the nodes of ``config['tune']['space']``'s keys; a
    section the schema declares no keys for has none.
    """
    return copy.deepcopy(_node(path).get("properties", {}))


def allowed(*path: str) -> tuple:
    """Return the values the key ``path`` may take (a list's: those of its items)."""
    return tuple(_scalar(_node(path))["enum"])


def defaults(*path: str) -> dict[str, Any]:
    """Return the default of every key under ``path`` that has one.

    Lists become tuples (nested ones too), as the frozen settings classes hold them.
    """
    return {
        key: _frozen(node["default"])
        for key, node in properties(*path).items()
        if "default" in node
    }


def limits(*path: str) -> dict[str, dict[str, float]]:
    """Return the range keywords of every numeric key under ``path`` that has any.

    A list's limits are its items' (``model.hidden``: each layer width); a key that is one
    number or a list of them (``model.latent_dim``) has the number's.
    """
    found = {key: _range(_scalar(node)) for key, node in properties(*path).items()}
    return {key: bounds for key, bounds in found.items() if bounds}


def choices(*path: str) -> dict[str, tuple]:
    """Return the allowed values of every enumerated key under ``path``."""
    return {key: tuple(node["enum"]) for key, node in properties(*path).items() if "enum" in node}


def _scalar(node: dict) -> dict:
    if "oneOf" in node:
        node = node["oneOf"][0]
    return node.get("items", node) if node.get("type") == "array" else node


def _range(node: dict) -> dict[str, float]:
    return {keyword: node[keyword] for keyword in RANGE_KEYWORDS if keyword in node}


def _frozen(value: Any) -> Any:
    return tuple(map(_frozen, value)) if isinstance(value, list) else value
