"""openpi's JAX tree table without any store: every model type's rows cover exactly the paths openpi's modules
declare, each row's transform gives our parameter's shape, and a missing tensorstore names the extra."""

from __future__ import annotations

import sys

import pytest
import torch

from pi0edge.errors import MissingExtraError
from pi0edge.export.checkpoint import load_checkpoint
from pi0edge.export.checkpoint.openpi_tree import openpi_model_type, openpi_shapes, tree_rows, tree_sizes
from pi0edge.export.config import tiny
from pi0edge.export.random_checkpoint import parameter_shapes

MODEL_TYPES = ("pi0", "pi05", "pi0fast")


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_table_rows_are_exactly_the_paths_openpi_declares(model_type):
    cfg = tiny(model_type)
    rows = [row[0] for row in tree_rows(openpi_model_type(cfg))]
    assert len(rows) == len(set(rows))
    assert set(rows) == set(openpi_shapes(cfg))


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_table_maps_openpis_shapes_onto_every_parameter_of_ours_once(model_type):
    cfg = tiny(model_type)
    shapes, ours = openpi_shapes(cfg), parameter_shapes(cfg)
    mapped = {}
    for path, scanned, targets in tree_rows(openpi_model_type(cfg)):
        stored = torch.empty(shapes[path], device="meta")
        for layer in range(shapes[path][0]) if scanned else [None]:
            for name, transform in targets:
                key = name.format(i=layer)
                assert key not in mapped, key
                mapped[key] = tuple(transform(stored if layer is None else stored[layer]).shape)
    assert mapped == ours


def test_tree_sizes_read_heads_and_head_dim_from_the_einsum_shapes():
    cfg = tiny("pi05")
    sizes = tree_sizes(openpi_shapes(cfg), "pi05")
    assert sizes["vision"] == {"num_heads": cfg.vision.num_heads}
    for stack, g in (("vlm", cfg.vlm), ("expert", cfg.expert)):
        assert sizes[stack] == {"width": g.width, "depth": g.depth, "mlp_dim": g.mlp_dim, "num_heads": g.num_heads,
                                "num_kv_heads": g.num_kv_heads, "head_dim": g.head_dim}


def test_orbax_checkpoint_without_tensorstore_names_the_openpi_extra(tmp_path, monkeypatch):
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "_METADATA").write_text("{}")
    monkeypatch.setitem(sys.modules, "tensorstore", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"pi0edge\[openpi\]"):
        load_checkpoint(tmp_path, settings={"action_horizon": 10})
