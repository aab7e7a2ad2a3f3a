"""The configuration reference ``config/README.md``, generated from ``config/schema.yaml``.

Every key's type, default, allowed values and description are read from the schema the
workflow validates its configuration against, so the page cannot drift from what the workflow
accepts. After editing the schema, regenerate the page::

    python -m scae._schema_reference            # writes config/README.md
    python -m scae._schema_reference --check    # exit 1 if it is stale or a key is undescribed

Only ``yaml`` and the standard library are imported (no torch, scanpy or anndata).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "config" / "schema.yaml"
README = REPO / "config" / "README.md"
#: The default column of a key that has no default, and of one that must be given.
NO_DEFAULT, REQUIRED = "—", "required"
#: How each JSON Schema type reads in the page (singular, plural).
TYPE_NAMES = {
    "integer": ("integer", "integers"),
    "number": ("number", "numbers"),
    "boolean": ("boolean", "booleans"),
    "string": ("string", "strings"),
    "null": ("null", "nulls"),
    "object": ("object", "objects"),
    "array": ("list", "lists"),
}
#: A number's bounds as JSON Schema states them, and how each reads.
LOWER = {"minimum": "≥", "exclusiveMinimum": ">"}
UPPER = {"maximum": "≤", "exclusiveMaximum": "<"}

INTRODUCTION = """\
# Configuration reference

This page is generated from `config/schema.yaml` by `python -m scae._schema_reference` and must
not be edited by hand: change the schema's descriptions and rerun that command (a test fails
while the page is stale).

Snakemake reads `config/config.yaml`, the default configuration. A file given with
`snakemake --configfile other.yaml` (several are read in the order given) is read over it: keys
given there replace those of `config/config.yaml`, mappings being merged key by key (so
`preprocess: {min_genes: 50}` changes only `min_genes`, and the datasets of
`config/config.yaml` stay unless set to `enabled: false`) and lists such as `losses` or `seeds`
replaced whole. The result is validated against the schema, which fills in the default of every
key left out; an unknown key, a wrong type or a value outside the allowed range stops the
workflow before any job runs.
"""


@dataclass(frozen=True)
class Key:
    """One configuration key as the reference lists it (every field is display text)."""

    #: Dotted path from the top level; ``<name>`` stands for any name of a mapping's entry.
    path: str
    #: e.g. ``integer``, ``string (one of: a, b)``, ``integer or list of integers``.
    type: str
    #: The default as YAML, :data:`NO_DEFAULT` when there is none, :data:`REQUIRED` when the
    #: key must be given.
    default: str
    #: The allowed range, list lengths and entry names; empty when unconstrained.
    limits: str
    #: The schema's description; empty when it has none.
    description: str


def load_schema(path: Path = SCHEMA) -> dict:
    """Load the schema at ``path`` (default ``config/schema.yaml``)."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def keys(schema: dict) -> list[Key]:
    """Return every key of ``schema`` in the schema's order, each followed by the keys below it.

    The keys below a key are its ``properties`` by name and its ``additionalProperties`` as
    ``<name>`` (``$ref`` resolved).
    """
    return list(_walk(schema, schema, "", required=False))


def undescribed(schema: dict) -> list[str]:
    """Paths of the keys of ``schema`` that have no description."""
    return [key.path for key in keys(schema) if not key.description]


def render(schema: dict) -> str:
    """Return the reference page of ``schema`` as Markdown.

    One section per top-level key (its description, type, default and allowed values), then
    a table of every key below it.
    """
    sections: dict[str, list[Key]] = {}
    for key in keys(schema):
        sections.setdefault(key.path.split(".")[0], []).append(key)
    lines = [INTRODUCTION]
    for top, *nested in sections.values():
        default = top.default if top.default == REQUIRED else f"default: {_code(top.default)}"
        summary = f"Type: {top.type}; {default}"
        if top.limits:
            summary += f"; allowed: {top.limits}"
        lines += [f"## {top.path}", "", _cell(top.description), "", _cell(summary) + ".", ""]
        if nested:
            lines += [
                "| key | type | default | allowed | description |",
                "|---|---|---|---|---|",
                *map(_row, nested),
                "",
            ]
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write ``config/README.md``, or with ``--check`` check it; return the exit status.

    With ``--check`` nothing is written, and the status is 1 when the page is stale or a key
    of ``config/schema.yaml`` has no description (reported either way).
    """
    parser = argparse.ArgumentParser(
        prog="python -m scae._schema_reference",
        description="Generate config/README.md from config/schema.yaml.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if config/README.md is stale or a key of "
        "the schema has no description",
    )
    args = parser.parse_args(argv)
    schema = load_schema()
    page, missing = render(schema), undescribed(schema)
    problems = [f"config/schema.yaml: no description for {', '.join(missing)}"] if missing else []
    if args.check:
        if not README.exists() or README.read_text(encoding="utf-8") != page:
            problems.append("config/README.md is stale: run python -m scae._schema_reference")
    else:
        README.write_text(page, encoding="utf-8")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if args.check and problems else 0


def _walk(root: dict, node: dict, path: str, required: bool) -> Iterator[Key]:
    """Yield the key ``node`` at ``path`` (none for the root), then the keys below it."""
    if path:
        yield Key(
            path=path,
            type=_type_text(node),
            default=_default_text(node, required),
            limits=_limits(node),
            description=" ".join(node.get("description", "").split()),
        )
    needed = set(node.get("required", []))
    for name, child in node.get("properties", {}).items():
        yield from _walk(
            root, _resolve(root, child), f"{path}.{name}" if path else name, name in needed
        )
    entries = node.get("additionalProperties")
    if isinstance(entries, dict):
        yield from _walk(root, _resolve(root, entries), f"{path}.<name>", required=False)


def _resolve(root: dict, node: dict) -> dict:
    """Return ``node`` with a local ``$ref`` (``#/definitions/...``) replaced by its target.

    Keywords beside the ``$ref`` are kept over the target's.
    """
    if "$ref" not in node:
        return node
    target: Any = root
    for part in node["$ref"].removeprefix("#/").split("/"):
        target = target[part]
    return {**target, **{k: v for k, v in node.items() if k != "$ref"}}


def _type_text(node: dict, plural: bool = False) -> str:
    """Return the type column: what a value of ``node`` is.

    E.g. ``integer or null``, ``list of integers``, ``string (one of: a, b)``; ``plural`` for
    a list's items (``lists of integers``).
    """
    if "oneOf" in node:
        return " or ".join(_type_text(option, plural) for option in node["oneOf"])
    kinds = node["type"] if isinstance(node["type"], list) else [node["type"]]
    texts = []
    for kind in kinds:
        text = TYPE_NAMES[kind][plural]
        if kind == "array" and "items" in node:
            text += " of " + _type_text(node["items"], plural=True)
        elif kind == "object" and isinstance(node.get("additionalProperties"), dict):
            text = f"mapping{'s' if plural else ''} of names to objects"
        texts.append(text)
    text = " or ".join(texts)
    if "enum" in node:
        text += f" (one of: {', '.join(map(_yaml_text, node['enum']))})"
    return text


def _default_text(node: dict, required: bool) -> str:
    """Return the default column: :data:`REQUIRED`, the default as YAML, or :data:`NO_DEFAULT`."""
    if required:
        return REQUIRED
    return _yaml_text(node["default"]) if "default" in node else NO_DEFAULT


def _yaml_text(value: Any) -> str:
    """Return ``value`` as YAML flow text, as config/config.yaml writes it.

    Floats positional (0.000001, not 1e-06), strings bare unless YAML would read them
    otherwise.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        text = format(Decimal(repr(value)), "f")
        return text if "." in text else text + ".0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(_yaml_text, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_text(v)}" for k, v in value.items()) + "}"
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).splitlines()[0]
    return json.dumps(value) if text.startswith("'") else text  # "" rather than ''


def _bounds(node: dict) -> str:
    """Return a number's range: ``≥ 1``, ``> 0``, ``0 < x < 1``, ``0 ≤ x ≤ 100``; empty if none."""
    low = next(((sign, node[k]) for k, sign in LOWER.items() if k in node), None)
    high = next(((sign, node[k]) for k, sign in UPPER.items() if k in node), None)
    if low and high:
        mirrored = {"≥": "≤", ">": "<"}[low[0]]
        return f"{_yaml_text(low[1])} {mirrored} x {high[0]} {_yaml_text(high[1])}"
    if low or high:
        sign, value = low or high
        return f"{sign} {_yaml_text(value)}"
    return ""


def _count(n: int, noun: str) -> str:
    """``1 item``, ``2 items``; ``1 entry``, ``2 entries``."""
    if n == 1:
        return f"{n} {noun}"
    return f"{n} {noun.removesuffix('y')}ies" if noun.endswith("y") else f"{n} {noun}s"


def _limits(node: dict) -> str:
    """Return the allowed column of ``node``; empty if unconstrained.

    A number's range, a list's length, uniqueness and item range, a mapping's size and entry
    names (each option's, for ``oneOf``).
    """
    if "oneOf" in node:
        return "; ".join(
            f"{_type_text(option)}: {limits}"
            for option in node["oneOf"]
            if (limits := _limits(option))
        )
    parts = [_bounds(node)]
    low, high = node.get("minItems"), node.get("maxItems")
    if low is not None and low == high:
        parts.append(f"exactly {_count(low, 'item')}")
    else:
        if low is not None:
            parts.append(f"at least {_count(low, 'item')}")
        if high is not None:
            parts.append(f"at most {_count(high, 'item')}")
    if node.get("uniqueItems"):
        parts.append("no repeats")
    if "items" in node and (items := _limits(node["items"])):
        parts.append(f"each item: {items}" if "items" in node["items"] else f"items {items}")
    if "minProperties" in node:
        parts.append(f"at least {_count(node['minProperties'], 'entry')}")
    if "pattern" in node.get("propertyNames", {}):
        parts.append(f"names matching {_code(node['propertyNames']['pattern'])}")
    return ", ".join(part for part in parts if part)


def _code(text: str) -> str:
    """``text`` as inline code, except the placeholders of a missing default."""
    return text if text in (NO_DEFAULT, REQUIRED) else f"`{text}`"


def _cell(text: str) -> str:
    """Return plain ``text`` made safe in a Markdown table cell.

    Pipes, a ``<`` that would open an HTML tag (``<name>``) and ``*`` (emphasis) are escaped;
    inline code keeps its ``<`` and ``*``.
    """
    pieces = text.split("`")
    for i in range(0, len(pieces), 2):  # outside code spans
        pieces[i] = re.sub(r"<(?=[A-Za-z/!?])", r"\\<", pieces[i]).replace("*", "\\*")
    return "`".join(pieces).replace("|", "\\|")


def _row(key: Key) -> str:
    """``key``'s row of its section's table."""
    cells = [_code(key.path), key.type, _code(key.default), key.limits, key.description]
    return "| " + " | ".join(map(_cell, cells)) + " |"


if __name__ == "__main__":
    sys.exit(main())
