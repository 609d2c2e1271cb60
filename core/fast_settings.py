"""bundle.yaml's `fast` section (Pi0-FAST only; docs/export.md, "Pi0-FAST"): typed, and checked against the
prefix and decode_step graphs' recorded I/O. core/manifest.py reads it (`FastSettings.from_bundle`) and runs
`check_fast_graphs` among its own checks; nothing else reads the section.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pi0edge import contract as c
from pi0edge.errors import BundleError

FAST_MODEL_TYPE = "pi0fast"
FAST_TOKENIZER_DIR = "fast_tokenizer"  # the FAST tokenizer's folder in a bundle (tokenizer.json, processor_config.json)


@dataclass(frozen=True)
class FastSettings:
    """The decode budget and the KV cache's slots (prefix + budget), the PaliGemma ids set aside at the top of the
    vocabulary, whether a BOS follows the prompt (LeRobot's sampler), the FAST tokenizer's folder in the bundle,
    the action width it decodes, and where the first action token sits."""

    max_action_tokens: int
    fast_skip_tokens: int
    bos_after_prompt: bool
    cache_len: int
    tokenizer_dir: str
    action_dim: int  # the width the FAST tokenizer decodes (LeRobot: the robot's; openpi: the model's)
    first_position_offset: int = 0  # action token k at position sum(prefix_mask) + offset + k (openpi: 1)

    @classmethod
    def from_bundle(cls, d, path: Path) -> FastSettings:
        """bundle.yaml's `fast` mapping; BundleError naming the file and the field."""
        if not isinstance(d, dict):
            raise BundleError(f"{path}: field 'fast' is missing or not a mapping (a Pi0-FAST bundle needs it)")
        if not isinstance(d.get("bos_after_prompt"), bool):
            raise BundleError(f"{path}: field 'fast.bos_after_prompt' must be true or false, got "
                              f"{d.get('bos_after_prompt')!r}")
        folder = d.get("tokenizer_dir")
        if not isinstance(folder, str) or not (path.parent / folder).is_dir():
            raise BundleError(f"{path}: field 'fast.tokenizer_dir' must name the bundle's FAST tokenizer folder, got "
                              f"{folder!r}")
        ints = {key: _int(d, key, path, minimum) for key, minimum in (
            ("max_action_tokens", 1), ("fast_skip_tokens", 0), ("cache_len", 1), ("action_dim", 1),
            ("first_position_offset", 0))}
        return cls(bos_after_prompt=d["bos_after_prompt"], tokenizer_dir=folder, **ints)


def _int(d: dict, key: str, path: Path, minimum: int) -> int:
    value = d.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BundleError(f"{path}: field 'fast.{key}' must be an integer >= {minimum}, got {value!r}")
    return value


def check_fast_graphs(m, path: Path, refuse: Callable[[Path, str, str], BundleError]) -> None:
    """A Pi0-FAST Manifest `m`: each graph's inputs are the contract's, and every field shows in the graphs'
    shapes. refuse: core/manifest.py's error for an edited field."""
    prefix, decode = m.graphs[c.PREFIX_GRAPH], m.graphs[c.DECODE_STEP_GRAPH]
    for graph, entry, specs in ((c.PREFIX_GRAPH, prefix, c.PREFIX_INPUTS), (c.DECODE_STEP_GRAPH, decode,
                                                                            c.DECODE_STEP_INPUTS)):
        if set(entry.input_names) != {s.name for s in specs}:
            raise refuse(path, f"graphs.{graph}.inputs", f"name {sorted(entry.input_names)}, the contract for "
                                                         f"{m.model_type} gives {sorted(s.name for s in specs)}")
        for io in (*entry.inputs, *entry.outputs):
            if io["name"] in (c.PAST_KEYS, c.PAST_VALUES, c.NEW_KEYS, c.NEW_VALUES) and io["dtype"] != m.precision:
                raise refuse(path, f"graphs.{graph}", f"gives {io['name']} dtype {io['dtype']}, but the precision "
                                                      f"is {m.precision}")
    fast, prompt_len = m.fast, m.max_token_len + int(m.fast.bos_after_prompt)
    prefix_len = prefix.io(c.PREFIX_MASK)["shape"][1]
    checks = (("model.image_size", m.image_size, prefix.io(c.IMAGES)["shape"][2]),
              ("model.cameras", len(m.cameras), prefix.io(c.IMAGES)["shape"][1]),
              ("model.max_token_len", prompt_len, prefix.io(c.TOKENS)["shape"][1]),
              ("model.vocab_size", m.vocab_size, decode.io(c.LOGITS)["shape"][1]),
              ("fast.cache_len", fast.cache_len, decode.io(c.CACHE_MASK)["shape"][1]),
              ("fast.max_action_tokens", fast.max_action_tokens, fast.cache_len - prefix_len))
    for field, value, in_graph in checks:
        if value != in_graph:
            raise refuse(path, field, f"gives {value}, but the graphs' shapes give {in_graph}")
    if not m.robot_action_dim <= fast.action_dim <= m.action_dim:
        raise refuse(path, "fast.action_dim", f"is {fast.action_dim}, outside [robot.action_dim "
                                              f"{m.robot_action_dim}, model.action_dim {m.action_dim}]")
    if prefix.io(c.PAST_KEYS)["shape"][3:] != decode.io(c.PAST_KEYS)["shape"][3:]:
        raise refuse(path, f"graphs.{c.DECODE_STEP_GRAPH}.inputs", "give a cache of another head layout than the "
                                                                   "prefix graph outputs")
