"""config/README.md, the configuration reference, is generated from config/schema.yaml's
descriptions (scae._schema_reference): every key is described and the page is current."""

import copy
import subprocess
import sys

import pytest
import yaml

from scae import _schema_reference as reference
from scae._schema_reference import keys, render, undescribed

from .conftest import REPO

SCHEMA = yaml.safe_load((REPO / "config/schema.yaml").read_text(encoding="utf-8"))
#: Where some keys' schema nodes live (the dataset entry behind its $ref).
NODES = {
    "datasets.<name>": ["definitions", "dataset"],
    "datasets.<name>.thin.fraction": [
        "definitions",
        "dataset",
        "properties",
        "thin",
        "properties",
        "fraction",
    ],
    "model.latent_dim": ["properties", "model", "properties", "latent_dim"],
    "tune.space.hidden": ["properties", "tune", "properties", "space", "properties", "hidden"],
    "summary.primary_metric": ["properties", "summary", "properties", "primary_metric"],
    "preprocess.min_genes": ["properties", "preprocess", "properties", "min_genes"],
    "losses": ["properties", "losses"],
}


def node_of(schema: dict, path: str) -> dict:
    node = schema
    for part in NODES[path]:
        node = node[part]
    return node


def row_of(page: str, path: str) -> str:
    rows = [line for line in page.splitlines() if line.startswith(f"| `{path}` |")]
    assert len(rows) == 1, (path, rows)
    return rows[0]


def cells(row: str) -> list[str]:
    """A table row's cells (escaped pipes kept inside their cell)."""
    return [cell.strip() for cell in row.replace("\\|", "\0").strip("|").split("|")]


def test_every_schema_key_has_a_description():
    missing = undescribed(SCHEMA)
    assert missing == [], (
        f"config/schema.yaml: {len(missing)} key(s) without a description: "
        f"{', '.join(missing)}; add one to each"
    )


def test_config_readme_is_generated_from_the_schema():
    page = (REPO / "config/README.md").read_text(encoding="utf-8")
    assert page == render(SCHEMA), (
        "config/README.md is stale (config/schema.yaml changed since it was generated): run "
        "python -m scae._schema_reference"
    )
    assert reference.main(["--check"]) == 0


def test_keys_walks_every_key_of_the_schema_in_its_order():
    """keys() finds the same paths as a plain walk over properties and additionalProperties."""
    expected = []

    def walk(node: dict, path: str) -> None:
        if path:
            expected.append(path)
        for name, child in node.get("properties", {}).items():
            walk(child, f"{path}.{name}" if path else name)
        entries = node.get("additionalProperties")
        if isinstance(entries, dict):
            walk(
                SCHEMA["definitions"]["dataset"] if "$ref" in entries else entries, f"{path}.<name>"
            )

    walk(SCHEMA, "")
    assert [key.path for key in keys(SCHEMA)] == expected


@pytest.mark.parametrize("path", NODES)
def test_removing_a_description_names_exactly_that_key(path):
    schema = copy.deepcopy(SCHEMA)
    del node_of(schema, path)["description"]
    assert undescribed(schema) == [path]
    assert undescribed(SCHEMA) == []  # the copy, not the schema, lost it


@pytest.mark.parametrize(
    ("path", "default", "shown"),
    [
        ("preprocess.min_genes", 123, "`123`"),
        ("tune.space.hidden", [[64]], "`[[64]]`"),
    ],
)
def test_a_changed_default_changes_that_keys_row_only(path, default, shown):
    schema = copy.deepcopy(SCHEMA)
    node_of(schema, path)["default"] = default
    before, after = render(SCHEMA).splitlines(), render(schema).splitlines()
    changed = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    assert changed == [(row_of(render(SCHEMA), path), row_of(render(schema), path))]
    assert cells(row_of(render(schema), path))[2] == shown


def test_a_changed_top_level_default_changes_its_section():
    schema = copy.deepcopy(SCHEMA)
    node_of(schema, "losses")["default"] = ["mse", "nb"]
    assert "default: `[mse, nb]`" in render(schema).split("## losses")[1].split("##")[0]
    assert "default: `[mse, nb]`" not in render(SCHEMA)


def test_every_key_appears_in_the_page():
    page = render(SCHEMA)
    paths = [key.path for key in keys(SCHEMA)]
    for path in (
        "datasets.<name>.thin.fraction",
        "model.latent_dim",
        "tune.space.hidden",
        "summary.primary_metric",
    ):
        assert path in paths
    for path in paths:
        marker = f"\n## {path}\n" if "." not in path else f"\n| `{path}` |"
        assert marker in page, path
    sections = [line.removeprefix("## ") for line in page.splitlines() if line.startswith("## ")]
    assert sections == list(SCHEMA["properties"])


def test_rows_state_type_default_limits_and_description():
    page = render(SCHEMA)
    assert cells(row_of(page, "datasets.<name>.thin.fraction"))[1:4] == [
        "number",
        "required",
        "0 < x < 1",
    ]
    assert cells(row_of(page, "datasets.<name>.path"))[2] == "required"
    assert cells(row_of(page, "datasets.<name>.seeds"))[2] == "—"
    assert cells(row_of(page, "model.latent_dim"))[1:3] == ["integer or list of integers", "`32`"]
    assert cells(row_of(page, "model.reference_rank"))[1:4] == ["integer or null", "`null`", "≥ 1"]
    assert cells(row_of(page, "model.dropout"))[3] == "0 ≤ x < 1"
    assert cells(row_of(page, "tune.space.weight_decay"))[2] == "`[0.0, 0.000001, 0.0001]`"
    assert cells(row_of(page, "tune.space.learning_rate"))[3] == "exactly 2 items, items > 0"
    assert cells(row_of(page, "tune.space.hidden"))[1] == "list of lists of integers"
    assert cells(row_of(page, "datasets.<name>.label_key"))[2] == '`""`'
    metric = cells(row_of(page, "summary.primary_metric"))
    assert metric[1].startswith("string (one of: centred_cosine_mean, zscored_cosine_mean")
    assert metric[4] == " ".join(node_of(SCHEMA, "summary.primary_metric")["description"].split())
    assert "## losses\n" in page and "Type: list of strings (one of: mse, cosine," in page
    assert "Type: mapping of names to objects; required; allowed: at least 1 entry" in page


def test_pipes_and_tags_in_descriptions_are_escaped():
    schema = copy.deepcopy(SCHEMA)
    node_of(schema, "model.latent_dim")["description"] = "a | b for <name>, x < 1"
    row = row_of(render(schema), "model.latent_dim")
    assert cells(row)[4] == "a \0 b for \\<name>, x < 1"  # \0: where an escaped pipe was
    assert row.replace("\\|", "").count("|") == 6


def test_the_page_is_deterministic_and_ends_in_one_newline():
    page = render(SCHEMA)
    assert page == render(copy.deepcopy(SCHEMA))
    assert page.startswith("# Configuration reference\n")
    assert page.endswith("|\n") and not page.endswith("\n\n")
    assert "`config/schema.yaml` by `python -m scae._schema_reference`" in page
    assert "--configfile other.yaml" in page


def test_main_writes_the_page_and_check_fails_when_stale(tmp_path, monkeypatch, capsys):
    target = tmp_path / "README.md"
    monkeypatch.setattr(reference, "README", target)
    assert reference.main(["--check"]) == 1 and not target.exists()
    assert "config/README.md is stale" in capsys.readouterr().err
    assert reference.main([]) == 0
    assert target.read_text(encoding="utf-8") == render(SCHEMA)
    assert reference.main(["--check"]) == 0
    target.write_text(render(SCHEMA) + "edited by hand\n", encoding="utf-8")
    assert reference.main(["--check"]) == 1


def test_check_fails_when_a_key_is_undescribed(tmp_path, monkeypatch, capsys):
    schema = copy.deepcopy(SCHEMA)
    del node_of(schema, "tune.space.hidden")["description"]
    target = tmp_path / "README.md"
    target.write_text(render(schema), encoding="utf-8")  # current, but a key is undescribed
    monkeypatch.setattr(reference, "README", target)
    monkeypatch.setattr(reference, "load_schema", lambda: schema)
    assert reference.main(["--check"]) == 1
    assert "no description for tune.space.hidden" in capsys.readouterr().err


def test_the_generator_imports_neither_torch_nor_scanpy():
    code = (
        "import sys, scae._schema_reference; "
        "print([m for m in ('torch', 'scanpy', 'anndata') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
