"""Model sizes of a checkpoint: tensor shapes first, config.json for what shapes cannot say.

Heads, horizon, prompt length and cameras come from config.json (LeRobot or openpi fields, a Gemma
variant name, or pi0edge's own `SIZES_KEY` block) and every claim is checked against the shapes:
a contradiction is an error naming both.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from pi0edge.contract import DEFAULT_CAMERAS
from pi0edge.errors import CheckpointError
from pi0edge.export.checkpoint.layouts import CONFIG_FILE, EMBED_NAME, checkpoint_key
from pi0edge.export.checkpoint.safetensors_io import WEIGHTS_FILE, TensorInfo
from pi0edge.export.config import FAST_MODEL_TYPE, GemmaConfig, Pi0Config, Pi0FastConfig, VisionConfig

# config.json key under which pi0edge's writer records sizes that no published variant name describes.
SIZES_KEY = "pi0edge_config"

# Gemma variants by name (openpi `gemma.get_config`): width, depth, mlp, heads, kv heads, head dim.
GEMMA_VARIANTS = {
    "gemma_2b": GemmaConfig(width=2048, depth=18, mlp_dim=16_384, num_heads=8, num_kv_heads=1, head_dim=256),
    "gemma_300m": GemmaConfig(width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256),
    "dummy": GemmaConfig(width=64, depth=4, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16),
}
for _name in ("gemma_2b", "gemma_300m"):
    GEMMA_VARIANTS[_name + "_lora"] = GEMMA_VARIANTS[_name]
SIGLIP_SO400M_WIDTH, SIGLIP_SO400M_HEADS = 1152, 16
# What LeRobot ("type") and openpi ("model_type", openpi's ModelType value) call Pi0-FAST, and pi0edge's own name.
FAST_TYPE_NAMES = ("pi0_fast", FAST_MODEL_TYPE)


def read_config(root: Path) -> dict:
    """config.json as a dict; CheckpointError when it is missing, not JSON, or not an object."""
    path = root / CONFIG_FILE
    if not path.is_file():
        # Guessing would export a model with the wrong horizon or prompt length that runs without complaint.
        raise CheckpointError(f"{path} is missing: the action horizon, prompt length, cameras and normalization "
                              "mode are read from it (the weights do not hold them); put the config.json saved with "
                              "this checkpoint (LeRobot save_pretrained, or openpi's PyTorch conversion) beside the "
                              "weights")
    try:
        raw = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return raw


def _layer_count(shapes: dict[str, tuple[int, ...]], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for name in shapes if (m := pattern.match(name))}
    return max(indices) + 1 if indices else 0


class _ConfigReader:
    """Reads sizes from shapes and checks each against what config.json (or a variant name) claims."""

    def __init__(self, raw: dict, keys: dict[str, TensorInfo], source: str, weights: str):
        self.raw, self.keys, self.source, self.weights = raw, keys, source, weights
        self.shapes = {name: info.shape for name, info in keys.items()}
        block = raw.get(SIZES_KEY)
        self.block: dict = block if isinstance(block, dict) else {}

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self.shapes:
            raise CheckpointError(f"{self.weights}: missing tensor '{checkpoint_key(name)}' (our '{name}'), needed "
                                  "to tell the model's sizes")
        return self.shapes[name]

    def agree(self, field: str, from_shape: int, name: str, claimed: Any, where: str, *, evidence: str = "",
              hint: str = "") -> int:
        """from_shape, unless config.json claims otherwise. evidence: what the weights show (default: tensor
        `name`'s shape); hint: how to fix the config, appended to the message."""
        if claimed is not None and claimed != from_shape:
            if not evidence:
                info = self.keys[name]
                evidence = f"tensor '{info.key}' in {info.file} has shape {list(info.shape)}, which gives {from_shape}"
            raise CheckpointError(f"{where} gives {field} = {claimed!r}, but {evidence}; the config does not match "
                                  f"these weights{hint}")
        return from_shape

    def agree_depth(self, field: str, prefix: str, depth: int, claimed: Any, where: str, *, hint: str = "") -> int:
        """A layer count: the evidence is the layers the weights hold under `prefix` (ours, e.g. "vlm.layers.")."""
        if claimed is None or claimed == depth:
            return depth
        first, last = (self._layer_key(prefix, i) for i in (0, depth - 1))
        evidence = f"the weights in {last[0]} hold {depth} layers ('{first[1]}' to '{last[1]}')"
        return self.agree(field, depth, "", claimed, where, evidence=evidence, hint=hint)

    def _layer_key(self, prefix: str, index: int) -> tuple[Path, str]:
        """(file, checkpoint key prefix) of layer `index`: a tensor's key minus what follows the layer number."""
        ours = f"{prefix}{index}."
        name, info = next((n, i) for n, i in self.keys.items() if n.startswith(ours))
        return info.file, info.key[:len(info.key) - len(name) + len(ours)]

    def claim(self, *path: str) -> tuple[Any, str]:
        """A value from the pi0edge block, e.g. claim("vlm", "width") -> (value or None, where it came from)."""
        node: Any = self.block
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        return node, f"{self.source} {SIZES_KEY}.{'.'.join(path)}"

    def vision(self) -> VisionConfig:
        patch = self.shape("vision.embeddings.patch_embedding.weight")  # [w, 3, patch, patch]
        tokens, _ = self.shape("vision.embeddings.position_embedding.weight")  # [patches per image, w]
        side = math.isqrt(tokens)
        if side * side != tokens or len(patch) != 4 or patch[2] != patch[3]:
            raise CheckpointError(f"vision tower: position embedding of {tokens} patches / patch kernel {list(patch)} "
                                  "is not a square image grid")
        width, patch_size = patch[0], patch[2]
        image_size = side * patch_size
        res = self.raw.get("image_resolution")
        if isinstance(res, list | tuple) and len(res) == 2:
            self.agree("image size", image_size, "vision.embeddings.position_embedding.weight", res[0],
                       f"{self.source} image_resolution")
        values = {"width": width, "depth": _layer_count(self.shapes, "vision.encoder.layers."),
                  "mlp_dim": self.shape("vision.encoder.layers.0.mlp.fc1.weight")[0], "patch_size": patch_size,
                  "image_size": image_size}
        patch_key, fc1_key = "vision.embeddings.patch_embedding.weight", "vision.encoder.layers.0.mlp.fc1.weight"
        evidence = {"width": patch_key, "patch_size": patch_key, "mlp_dim": fc1_key,
                    "image_size": "vision.embeddings.position_embedding.weight"}
        for field, value in values.items():
            if field == "depth":
                self.agree_depth("vision depth", "vision.encoder.layers.", value, *self.claim("vision", field))
            else:
                self.agree(f"vision {field}", value, evidence[field], *self.claim("vision", field))
        heads, _ = self.claim("vision", "num_heads")
        if heads is None:
            if width != SIGLIP_SO400M_WIDTH:
                raise CheckpointError(f"{self.source}: the vision tower is {width} wide (not SigLIP So400m's 1152), "
                                      "so its number of heads cannot be told from shapes; add "
                                      f"{SIZES_KEY}.vision.num_heads")
            heads = SIGLIP_SO400M_HEADS
        eps, _ = self.claim("vision", "layer_norm_eps")
        return self._build(VisionConfig, values, num_heads=heads, layer_norm_eps=eps)

    def gemma(self, stack: str, variant_field: str) -> GemmaConfig:
        q_out, width = self.shape(f"{stack}.layers.0.self_attn.q_proj.weight")
        kv_out, _ = self.shape(f"{stack}.layers.0.self_attn.k_proj.weight")
        values = {"width": width, "depth": _layer_count(self.shapes, f"{stack}.layers."),
                  "mlp_dim": self.shape(f"{stack}.layers.0.mlp.gate_proj.weight")[0]}
        variant_name = self.raw.get(variant_field)
        variant = GEMMA_VARIANTS.get(variant_name) if isinstance(variant_name, str) else None
        hint = ""
        if self.claim(stack, "width")[0] is not None:
            claimed = {f.name: self.claim(stack, f.name) for f in fields(GemmaConfig)}
        elif variant is not None:
            where = f"{self.source} {variant_field}={variant_name!r}"
            claimed = {f.name: (getattr(variant, f.name), where) for f in fields(GemmaConfig)}
            hint = (f"; if {variant_field} is wrong, give the real sizes in config.json as \"{SIZES_KEY}\": "
                    f"{{\"{stack}\": {{\"width\": ..., \"depth\": ..., \"mlp_dim\": ..., \"num_heads\": ..., "
                    "\"num_kv_heads\": ..., \"head_dim\": ...}}, which takes precedence over the variant name "
                    "(docs/export.md, \"Checkpoints it reads\")")
        else:
            # No size record: every Pi0 Gemma is multi-query (one kv head), which pins the head layout.
            claimed = {"num_kv_heads": (1, "multi-query default"), "head_dim": (kv_out, "multi-query default"),
                       "num_heads": (q_out // kv_out, "multi-query default")}
        q_key, gate_key = f"{stack}.layers.0.self_attn.q_proj.weight", f"{stack}.layers.0.mlp.gate_proj.weight"
        self.agree(f"{stack} width", width, q_key, *claimed.get("width", (None, "")), hint=hint)
        self.agree_depth(f"{stack} depth", f"{stack}.layers.", values["depth"], *claimed.get("depth", (None, "")),
                         hint=hint)
        self.agree(f"{stack} mlp_dim", values["mlp_dim"], gate_key, *claimed.get("mlp_dim", (None, "")), hint=hint)
        heads, kv_heads, head_dim = (claimed[f][0] for f in ("num_heads", "num_kv_heads", "head_dim"))
        if None in (heads, kv_heads, head_dim):
            raise CheckpointError(f"{self.source}: {SIZES_KEY}.{stack} lacks num_heads/num_kv_heads/head_dim")
        self.agree(f"{stack} num_heads * head_dim", q_out, q_key, heads * head_dim, claimed["num_heads"][1], hint=hint)
        self.agree(f"{stack} num_kv_heads * head_dim", kv_out, f"{stack}.layers.0.self_attn.k_proj.weight",
                   kv_heads * head_dim, claimed["num_kv_heads"][1], hint=hint)
        extra = {f: claimed[f][0] for f in ("rms_norm_eps", "rope_base") if f in claimed}
        return self._build(GemmaConfig, values, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim, **extra)

    def _build(self, cls, values: dict, **more):
        kwargs = {**values, **{k: v for k, v in more.items() if v is not None}}
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{self.source}: sizes read from the weights do not form a valid model: "
                                  f"{exc}") from exc

    def settle(self, setting: str, *candidates: tuple[Any, str], default: Any = None) -> Any:
        """The one value that every field giving `setting` agrees on (fields left out do not count)."""
        given = [(value, where) for value, where in candidates if value is not None]
        for value, where in given[1:]:
            if value != given[0][0]:
                raise CheckpointError(f"{given[0][1]} = {given[0][0]!r} but {where} = {value!r}: both give the "
                                      f"{setting}; correct the wrong one so they agree")
        return given[0][0] if given else default

    def raw_claim(self, field: str) -> tuple[Any, str]:
        """A published config.json field -> (value or None, where it came from)."""
        return self.raw.get(field), f"{self.source} {field}"

    def model_type(self) -> str:
        pi0, pi05 = "action_time_mlp_in.weight" in self.shapes, "time_mlp_in.weight" in self.shapes
        if not pi0 and not pi05 and "action_in_proj.weight" not in self.shapes:
            return self._fast_type()
        if pi0 == pi05:
            what = "both" if pi0 else "neither"
            raise CheckpointError(f"weights have {what} of 'action_time_mlp_in.weight' (pi0) and 'time_mlp_in.weight' "
                                  "(pi0.5): cannot tell the model type")
        from_weights = "pi05" if pi05 else "pi0"
        evidence = self.keys["time_mlp_in.weight" if pi05 else "action_time_mlp_in.weight"]
        pi05_flag = self.raw.get("pi05")  # some openpi exports record openpi's Pi0Config.pi05
        flag = None if pi05_flag is None else ("pi05" if pi05_flag else "pi0")
        for claimed, where in (self.claim("model_type"), (self.raw.get("type"), f"{self.source} type"),
                               (flag, f"{self.source} pi05")):
            if claimed is not None and claimed != from_weights:
                raise CheckpointError(f"{where} is {claimed!r} but {evidence.file} holds '{evidence.key}', a "
                                      f"{from_weights} tensor; the config does not match these weights")
        return from_weights

    def _fast_type(self) -> str:
        """No action expert and no action projections: only Pi0-FAST, and config.json must say so."""
        claims = (self.claim("model_type"), (self.raw.get("type"), f"{self.source} type"),
                  (self.raw.get("model_type"), f"{self.source} model_type"))
        named = [(value, where) for value, where in claims if value is not None]
        if not named or any(value not in FAST_TYPE_NAMES for value, _ in named):
            said = ", ".join(f"{where} = {value!r}" for value, where in named) or "config.json names no model type"
            raise CheckpointError(f"the weights hold no action expert or action projections (a Pi0-FAST model) "
                                  f"but {said}; a Pi0-FAST checkpoint's config.json has \"type\": \"pi0_fast\" "
                                  "(LeRobot) or \"model_type\": \"pi0_fast\" (openpi)")
        return FAST_MODEL_TYPE

    def cameras(self) -> tuple[str, ...]:
        claimed, _ = self.claim("cameras")
        if claimed:
            return tuple(claimed)
        features = self.raw.get("input_features") or {}
        names = [k.removeprefix("observation.images.") for k, v in features.items()
                 if k.startswith("observation.images.") and isinstance(v, dict) and v.get("type") == "VISUAL"]
        names += [f"empty_camera_{i}" for i in range(int(self.raw.get("empty_cameras") or 0))]
        return tuple(names) or DEFAULT_CAMERAS

    def config(self) -> Pi0Config | Pi0FastConfig:
        model_type = self.model_type()
        if model_type == FAST_MODEL_TYPE:
            return self.fast_config()
        vision, vlm, expert = self.vision(), self.gemma("vlm", "paligemma_variant"), self.gemma(
            "expert", "action_expert_variant")
        vocab = self.vocab(vlm)
        action_dim, state_dim = self.widths(model_type)
        settings = self.settings(model_type)
        try:
            return Pi0Config(
                model_type=model_type, vision=vision, vlm=vlm, expert=expert, vocab_size=vocab, action_dim=action_dim,
                state_dim=int(state_dim), cameras=self.cameras(),
                **{k: (float(v) if k.endswith("_period") else int(v)) for k, v in settings.items() if v is not None})
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{self.source}: the configuration read from it and the weights is invalid: "
                                  f"{exc}") from exc

    def vocab(self, vlm: GemmaConfig) -> int:
        vocab, embed_width = self.shape(EMBED_NAME)
        self.agree("vlm width", embed_width, EMBED_NAME, vlm.width, "the VLM's q_proj input width")
        return self.agree("vocab_size", vocab, EMBED_NAME, *self.claim("vocab_size"))

    def fast_config(self) -> Pi0FastConfig:
        """Pi0-FAST: sizes from the shapes; chunk, widths and token budgets from LeRobot's PI0FastConfig or
        openpi's Pi0FASTConfig fields (LeRobot's sampler appends a BOS after the prompt, openpi's does not; openpi's
        places the first action token one position further)."""
        vision, vlm = self.vision(), self.gemma("vlm", "paligemma_variant")
        vocab = self.vocab(vlm)
        lerobot = "type" in self.raw
        values = {
            "action_horizon": self.settle("action horizon", self.claim("action_horizon"),
                                          self.raw_claim("chunk_size"), self.raw_claim("action_horizon"),
                                          default=50 if lerobot else 32),
            "max_token_len": self.settle("prompt length in tokens", self.claim("max_token_len"),
                                         self.raw_claim("tokenizer_max_length"), self.raw_claim("max_token_len"),
                                         default=200 if lerobot else 250),
            "action_dim": self.settle("action width", self.claim("action_dim"), self.raw_claim("max_action_dim"),
                                      self.raw_claim("action_dim"), default=32),
            "state_dim": self.settle("state width", self.claim("state_dim"), self.raw_claim("max_state_dim"),
                                     default=32),
            "max_action_tokens": self.settle("action token budget", self.claim("max_action_tokens"),
                                             self.raw_claim("max_action_tokens"), default=256),
            "fast_skip_tokens": self.settle("FAST skip tokens", self.claim("fast_skip_tokens"),
                                            self.raw_claim("fast_skip_tokens"), default=128),
        }
        values["first_position_offset"] = self.settle("first action token's position offset",
                                                      self.claim("first_position_offset"), default=0 if lerobot else 1)
        bos_after_prompt = self.settle("BOS after the prompt", self.claim("bos_after_prompt"), default=lerobot)
        try:
            return Pi0FastConfig(vision=vision, vlm=vlm, vocab_size=vocab, cameras=self.cameras(),
                                 bos_after_prompt=bool(bos_after_prompt), **{k: int(v) for k, v in values.items()})
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{self.source}: the Pi0-FAST configuration read from it and the weights is "
                                  f"invalid: {exc}") from exc

    def widths(self, model_type: str) -> tuple[int, Any]:
        """(action_dim, state_dim): the projections' input widths, checked against every field that gives them."""
        action_dim = self.shape("action_in_proj.weight")[1]
        for claimed in (self.claim("action_dim"), self.raw_claim("max_action_dim"), self.raw_claim("action_dim")):
            self.agree("action_dim", action_dim, "action_in_proj.weight", *claimed)
        state_claims = (self.claim("state_dim"), self.raw_claim("max_state_dim"))
        if model_type == "pi05":  # no state projection: the state is in the prompt, padded like openpi to action_dim
            return action_dim, self.settle("state width", *state_claims, default=action_dim)
        state_dim = self.shape("state_proj.weight")[1]
        for claimed in state_claims:
            self.agree("state_dim", state_dim, "state_proj.weight", *claimed)
        return action_dim, state_dim

    def settings(self, model_type: str) -> dict[str, Any]:
        """What the weights cannot tell: the pi0edge block, LeRobot's and openpi's names of it must agree."""
        return {
            "action_horizon": self.settle("action horizon", self.claim("action_horizon"),
                                          self.raw_claim("chunk_size"), self.raw_claim("action_horizon"), default=50),
            "max_token_len": self.settle("prompt length in tokens", self.claim("max_token_len"),
                                         self.raw_claim("tokenizer_max_length"), self.raw_claim("max_token_len"),
                                         default=200 if model_type == "pi05" else 48),
            "num_steps": self.settle("number of denoising steps", self.claim("num_steps"),
                                     self.raw_claim("num_inference_steps"), default=10),
            **{k: self.settle(f"time embedding {k}", self.claim(k), self.raw_claim(k)) for k in ("min_period",
                                                                                            "max_period")},
        }

def detect_config(raw: dict, infos: dict[str, TensorInfo], *, source: str = CONFIG_FILE,
                  weights: str = WEIGHTS_FILE) -> Pi0Config | Pi0FastConfig:
    """The Pi0Config of mapped tensors `infos` (ours -> TensorInfo) and config.json contents `raw`.

    source / weights: how messages name config.json and the weight file(s)."""
    return _ConfigReader(raw, infos, source, weights).config()


def sizes_record(cfg: Pi0Config | Pi0FastConfig) -> dict:
    """The config.json block that records sizes no variant name describes (read back by detect_config)."""
    record = asdict(cfg)
    record["cameras"] = list(cfg.cameras)
    return record
