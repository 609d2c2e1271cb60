"""Model configurations as data: frozen dataclasses, full-size and tiny presets side by side.

Full sizes are the "Shapes" table of docs/model.md; the tiny ones follow openpi's "dummy" Gemma and exist so
tests run exact and fast. Derived sizes are properties, never stored twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from pi0edge.contract import DEFAULT_CAMERAS
from pi0edge.fast_settings import FAST_MODEL_TYPE

MODEL_TYPES = ("pi0", "pi05")  # flow matching (Pi0Config); Pi0-FAST is FAST_MODEL_TYPE (Pi0FastConfig)


def _check_positive(owner: str, **values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{owner}.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class VisionConfig:
    """SigLIP tower: patch embedding, pre-LN encoder, final LayerNorm (docs/model.md, "Shapes")."""

    width: int = 1152
    depth: int = 27
    mlp_dim: int = 4304
    num_heads: int = 16
    patch_size: int = 14
    image_size: int = 224
    layer_norm_eps: float = 1e-6

    def __post_init__(self):
        _check_positive("vision", width=self.width, depth=self.depth, mlp_dim=self.mlp_dim,
                        num_heads=self.num_heads, patch_size=self.patch_size, image_size=self.image_size)
        if self.width % self.num_heads:
            raise ValueError(f"vision.width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"vision.image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def tokens_per_image(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class GemmaConfig:
    """One Gemma stack: the VLM (Gemma 2B) or the action expert (Gemma 300M)."""

    width: int
    depth: int
    mlp_dim: int
    num_heads: int = 8
    num_kv_heads: int = 1
    head_dim: int = 256
    rms_norm_eps: float = 1e-6
    rope_base: float = 10_000.0

    def __post_init__(self):
        _check_positive("gemma", width=self.width, depth=self.depth, mlp_dim=self.mlp_dim,
                        num_heads=self.num_heads, num_kv_heads=self.num_kv_heads, head_dim=self.head_dim)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"gemma.num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"gemma.head_dim {self.head_dim} must be even for RoPE")


GEMMA_2B = GemmaConfig(width=2048, depth=18, mlp_dim=16_384)
GEMMA_300M = GemmaConfig(width=1024, depth=18, mlp_dim=4096)
# openpi's "dummy" variant: what tests use.
GEMMA_DUMMY = GemmaConfig(width=64, depth=4, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16)
SIGLIP_SO400M = VisionConfig()
SIGLIP_TINY = VisionConfig(width=32, depth=2, mlp_dim=64, num_heads=4)


@dataclass(frozen=True)
class Pi0Config:
    """A whole Pi0 / Pi0.5 policy. `model_type` is "pi0" or "pi05" (Pi0.5)."""

    model_type: str = "pi0"
    vision: VisionConfig = SIGLIP_SO400M
    vlm: GemmaConfig = GEMMA_2B
    expert: GemmaConfig = GEMMA_300M
    vocab_size: int = 257_152
    action_dim: int = 32  # model action width; robot vectors are zero-padded to it
    state_dim: int = 32
    action_horizon: int = 50
    max_token_len: int = 48
    num_steps: int = 10
    min_period: float = 4e-3  # time posemb, docs/model.md, "Suffix and one denoise step"
    max_period: float = 4.0
    cameras: tuple[str, ...] = field(default=DEFAULT_CAMERAS)

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        _check_positive("model", vocab_size=self.vocab_size, action_dim=self.action_dim, state_dim=self.state_dim,
                        action_horizon=self.action_horizon, max_token_len=self.max_token_len,
                        num_steps=self.num_steps)
        if not self.cameras or len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras must be a non-empty list of distinct names, got {self.cameras!r}")
        if self.vlm.depth != self.expert.depth:
            raise ValueError(f"VLM and expert depth differ ({self.vlm.depth} vs {self.expert.depth}): "
                             "shared attention pairs their layers one to one")
        if (self.vlm.num_heads, self.vlm.num_kv_heads, self.vlm.head_dim) != (
                self.expert.num_heads, self.expert.num_kv_heads, self.expert.head_dim):
            raise ValueError("VLM and expert must agree on heads, kv heads and head_dim for shared attention")
        if self.expert.width % 2:
            raise ValueError(f"expert.width {self.expert.width} must be even for the sin/cos time embedding")

    @property
    def is_pi05(self) -> bool:
        return self.model_type == "pi05"

    @property
    def num_cameras(self) -> int:
        return len(self.cameras)

    @property
    def prefix_len(self) -> int:
        """T: image tokens of every camera, then the prompt tokens."""
        return self.num_cameras * self.vision.tokens_per_image + self.max_token_len

    @property
    def suffix_len(self) -> int:
        """pi0: the state token + H action tokens; pi0.5: H action tokens."""
        return self.action_horizon + (0 if self.is_pi05 else 1)

    @property
    def num_layers(self) -> int:
        return self.vlm.depth


@dataclass(frozen=True)
class Pi0FastConfig:
    """A Pi0-FAST policy (docs/model.md, "Pi0-FAST"): SigLIP + the PaliGemma Gemma with its tied LM head, no
    action expert. Actions are FAST tokens decoded one at a time; action token k is PaliGemma id
    `vocab_size - 1 - fast_skip_tokens - k`.

    max_token_len: the prompt's token budget ("Task: ..., State: ...;\n" with BOS first), LeRobot's
    tokenizer_max_length / openpi's max_token_len. bos_after_prompt: LeRobot's sampler appends one BOS token
    after the padded prompt (openpi does not); it is part of the prefix. max_action_tokens: the decode budget,
    and the KV cache's room beyond the prefix. first_position_offset: action token k sits at RoPE position
    sum(prefix_pad) + offset + k (LeRobot 0, as in training; openpi's JAX sampler 1)."""

    vision: VisionConfig = SIGLIP_SO400M
    vlm: GemmaConfig = GEMMA_2B
    vocab_size: int = 257_152
    action_dim: int = 32  # the FAST tokenizer's action width; robot vectors are zero-padded to it
    state_dim: int = 32  # the state written into the prompt, padded to this width
    action_horizon: int = 50
    max_token_len: int = 200
    max_action_tokens: int = 256
    fast_skip_tokens: int = 128
    bos_after_prompt: bool = True
    first_position_offset: int = 0  # openpi's JAX sampler: 1 (its first action token skips one position)
    cameras: tuple[str, ...] = field(default=DEFAULT_CAMERAS)
    model_type: str = FAST_MODEL_TYPE

    def __post_init__(self):
        if self.model_type != FAST_MODEL_TYPE:
            raise ValueError(f"Pi0FastConfig.model_type must be {FAST_MODEL_TYPE!r}, got {self.model_type!r}")
        _check_positive("model", vocab_size=self.vocab_size, action_dim=self.action_dim, state_dim=self.state_dim,
                        action_horizon=self.action_horizon, max_token_len=self.max_token_len,
                        max_action_tokens=self.max_action_tokens)
        if self.first_position_offset not in (0, 1):
            raise ValueError(f"first_position_offset must be 0 (LeRobot) or 1 (openpi), "
                             f"got {self.first_position_offset}")
        if not 0 <= self.fast_skip_tokens < self.vocab_size:
            raise ValueError(f"fast_skip_tokens must be in [0, vocab_size), got {self.fast_skip_tokens}")
        if not self.cameras or len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras must be a non-empty list of distinct names, got {self.cameras!r}")

    @property
    def is_pi05(self) -> bool:
        return False

    @property
    def num_cameras(self) -> int:
        return len(self.cameras)

    @property
    def prompt_len(self) -> int:
        """L: the prompt tokens the prefix graph reads (max_token_len, plus the BOS LeRobot appends)."""
        return self.max_token_len + int(self.bos_after_prompt)

    @property
    def prefix_len(self) -> int:
        """T: image tokens of every camera, then the prompt tokens."""
        return self.num_cameras * self.vision.tokens_per_image + self.prompt_len

    @property
    def cache_len(self) -> int:
        """C: the decode graph's KV cache slots, the prefix and room for every action token."""
        return self.prefix_len + self.max_action_tokens

    @property
    def num_layers(self) -> int:
        return self.vlm.depth


def full(model_type: str = "pi0") -> Pi0Config | Pi0FastConfig:
    """The published size: SigLIP So400m + Gemma 2B + Gemma 300M (pi0 ~3.24 B, pi0.5 ~3.35 B parameters);
    Pi0-FAST: SigLIP So400m + Gemma 2B (~2.9 B)."""
    if model_type == FAST_MODEL_TYPE:
        return Pi0FastConfig()
    return Pi0Config(model_type=model_type, max_token_len=200 if model_type == "pi05" else 48)


def tiny(model_type: str = "pi0", **overrides) -> Pi0Config | Pi0FastConfig:
    """Exact-and-fast test size: dummy Gemma for both stacks, 2-layer SigLIP, 512-token vocabulary."""
    if model_type == FAST_MODEL_TYPE:
        base = Pi0FastConfig(vision=SIGLIP_TINY, vlm=GEMMA_DUMMY, vocab_size=512, action_dim=8, state_dim=8,
                             action_horizon=10, max_token_len=64, max_action_tokens=32, fast_skip_tokens=16)
        return replace(base, **overrides)
    base = Pi0Config(model_type=model_type, vision=SIGLIP_TINY, vlm=GEMMA_DUMMY,
                     expert=replace(GEMMA_DUMMY, width=32, mlp_dim=64), vocab_size=512,
                     action_dim=8, state_dim=8, action_horizon=10,
                     max_token_len=48 if model_type == "pi0" else 64)
    return replace(base, **overrides)


def mid(model_type: str = "pi0") -> Pi0Config | Pi0FastConfig:
    """A mid-size config that runs in seconds on a laptop CPU: used by the CPU benchmarks."""
    vlm = GemmaConfig(width=512, depth=6, mlp_dim=2048, num_heads=8, num_kv_heads=1, head_dim=64)
    vision = VisionConfig(width=256, depth=6, mlp_dim=1024, num_heads=4)
    if model_type == FAST_MODEL_TYPE:
        return Pi0FastConfig(vision=vision, vlm=vlm, vocab_size=4096, max_action_tokens=64, fast_skip_tokens=128)
    return Pi0Config(model_type=model_type, vision=vision,
                     vlm=vlm, expert=replace(vlm, width=256, mlp_dim=1024), vocab_size=4096,
                     max_token_len=48 if model_type == "pi0" else 200)


PRESETS = {"full": full, "mid": mid, "tiny": tiny}
