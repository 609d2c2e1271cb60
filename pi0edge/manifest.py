"""bundle.yaml: what a bundle holds and how to check it. Export writes it, the runtime reads it.

Torch-free. A bundle is refused, with the file named, when its format version is unknown, a listed
file is missing, or a file's sha256 differs from the manifest (tampered or corrupted).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import yaml

from pi0edge import contract as c
from pi0edge.atomic import write_text_atomic  # noqa: F401  (re-exported: older imports)
from pi0edge.errors import BundleError
from pi0edge.normalization import NormStats, NormStatsError

MANIFEST_NAME = "bundle.yaml"
FORMAT_VERSION = 1
_HASH_CHUNK_BYTES = 16 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class GraphEntry:
    file: str
    inputs: tuple[dict, ...]
    outputs: tuple[dict, ...]
    num_steps: int | None = None  # denoise_loop only: the Euler steps unrolled in it

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(i["name"] for i in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o["name"] for o in self.outputs)

    def io(self, name: str) -> dict:
        for entry in (*self.inputs, *self.outputs):
            if entry["name"] == name:
                return entry
        raise KeyError(name)


@dataclass(frozen=True)
class Manifest:
    """The parsed bundle.yaml (the raw dict stays available as `raw`)."""

    bundle_dir: Path
    raw: dict
    model_type: str
    precision: str
    cameras: tuple[str, ...]
    image_size: int
    max_token_len: int
    action_dim: int
    state_dim: int
    action_horizon: int
    num_steps: int
    robot_state_dim: int
    robot_action_dim: int
    norm_stats: NormStats
    tokenizer_file: str
    graphs: dict[str, GraphEntry]

    @property
    def is_pi05(self) -> bool:
        return self.model_type == "pi05"

    def path(self, name: str) -> Path:
        return self.bundle_dir / name


def _field(d: dict, dotted: str, where: Path):
    cur = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise BundleError(f"{where}: field '{dotted}' is missing")
        cur = cur[part]
    return cur


def read_yaml_mapping(path: Path) -> dict:
    """A bundle-side YAML file (bundle.yaml, engine.yaml) as a dict, or BundleError naming the file."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise BundleError(f"{path}: expected a mapping at the top level")
    return raw


def load_manifest(bundle_dir: str | Path, verify_checksums: bool = True) -> Manifest:
    """Read and check a bundle's manifest; with verify_checksums, hash every listed file."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST_NAME
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir}: not a bundle directory (it does not exist or is not a folder)")
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: no {MANIFEST_NAME}; is this a bundle written by `pi0edge export`?")
    raw = read_yaml_mapping(path)
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format version {version!r} is not supported by this runtime "
                          f"(it reads version {FORMAT_VERSION}); re-export the bundle with this pi0edge version")
    files = _field(raw, "files", path)
    for name, digest in files.items():
        file_path = bundle_dir / name
        if not file_path.is_file():
            raise BundleError(f"{file_path}: listed in {MANIFEST_NAME} but missing")
        if verify_checksums and sha256_file(file_path) != digest:
            raise BundleError(f"{file_path}: sha256 differs from {MANIFEST_NAME}: the file is corrupted or was "
                              "modified after export; re-export the bundle")
    graphs = {}
    optional = (c.DENOISE_LOOP_GRAPH,) if c.DENOISE_LOOP_GRAPH in (raw.get("graphs") or {}) else ()
    for graph in (c.PREFIX_GRAPH, c.DENOISE_STEP_GRAPH, *optional):
        g = _field(raw, f"graphs.{graph}", path)
        steps = g.get("num_steps") if graph == c.DENOISE_LOOP_GRAPH else None
        if graph == c.DENOISE_LOOP_GRAPH and not (isinstance(steps, int) and steps >= 1):
            raise BundleError(f"{path}: field 'graphs.{graph}.num_steps' must be a positive integer, got {steps!r}")
        graphs[graph] = GraphEntry(g["file"], tuple(g["inputs"]), tuple(g["outputs"]), steps)
        if g["file"] not in files:
            raise BundleError(f"{path}: graph file {g['file']} has no checksum in 'files'")
    model = _field(raw, "model", path)
    try:
        norm_stats = NormStats.from_dict(_field(raw, "normalization", path))
    except NormStatsError as exc:
        raise BundleError(f"{path}: field 'normalization': {exc}") from exc
    return Manifest(
        bundle_dir=bundle_dir, raw=raw, model_type=_field(model, "type", path),
        precision=_field(raw, "precision", path),
        cameras=tuple(_field(model, "cameras", path)), image_size=int(_field(model, "image_size", path)),
        max_token_len=int(_field(model, "max_token_len", path)), action_dim=int(_field(model, "action_dim", path)),
        state_dim=int(_field(model, "state_dim", path)), action_horizon=int(_field(model, "action_horizon", path)),
        num_steps=int(_field(model, "num_steps", path)),
        robot_state_dim=int(_field(raw, "robot.state_dim", path)),
        robot_action_dim=int(_field(raw, "robot.action_dim", path)),
        norm_stats=norm_stats, tokenizer_file=_field(raw, "tokenizer.file", path), graphs=graphs)
