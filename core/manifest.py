"""bundle.yaml: what a bundle holds and how to check it. Export writes it, the runtime reads it.

Torch-free. A bundle is refused, with the file named, when its format version is unknown, a listed
file is missing, a file's sha256 differs from the manifest (tampered or corrupted), or a field contradicts
the graphs' recorded I/O or another field (an edited bundle.yaml; the field is named).
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from pathlib import Path

import yaml

from pi0edge import contract as c
from pi0edge.atomic import write_text_atomic  # noqa: F401  (re-exported: older imports)
from pi0edge.deployment import DeploymentRecord
from pi0edge.errors import BundleError
from pi0edge.fast_settings import FAST_MODEL_TYPE, FastSettings, check_fast_graphs
from pi0edge.normalization import NormStats, NormStatsError
from pi0edge.yaml_io import load_yaml

MANIFEST_NAME = "bundle.yaml"
TOKENIZER_NAME = "tokenizer.model"  # the tokenizer's name inside a bundle
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
    """The parsed and checked bundle.yaml: every field a reader needs, typed. Nothing outside this module
    indexes the YAML document itself; a writer deriving a new bundle.yaml starts from `to_document()`."""

    bundle_dir: Path
    raw: dict  # the YAML document as read; use the typed fields (writers: to_document())
    model_type: str
    precision: str
    cameras: tuple[str, ...]
    image_size: int
    max_token_len: int
    vocab_size: int | None
    action_dim: int
    state_dim: int
    action_horizon: int
    num_steps: int
    robot_state_dim: int
    robot_action_dim: int
    norm_stats: NormStats
    tokenizer_file: str
    graphs: dict[str, GraphEntry]
    files: dict[str, str]  # file name -> sha256
    fixed_num_steps: int | None = None  # optimized step graphs: the only step count they can run
    quantization: dict | None = None  # `pi0edge quantize`: mode, tool, measured error...
    emulates: str | None = None  # float32 graphs computing what graphs of this precision compute
    deployment: DeploymentRecord | None = None  # what the policy was trained with; None: an older bundle
    rtc: bool = False  # the denoise graphs take real-time chunking's guidance inputs (`export --rtc`)
    fast: FastSettings | None = None  # Pi0-FAST only (num_steps is then 0: there is no Euler loop)

    @property
    def is_pi05(self) -> bool:
        return self.model_type == "pi05"

    @property
    def is_fast(self) -> bool:
        return self.model_type == FAST_MODEL_TYPE

    def require_flow_graphs(self, command: str) -> None:
        """BundleError for a Pi0-FAST bundle in a command that handles the flow-matching graphs only."""
        if self.is_fast:
            raise BundleError(f"{self.bundle_dir}: a Pi0-FAST bundle (prefix + decode_step graphs); {command} handles "
                              "the flow-matching graphs (prefix, denoise_step) only: run this bundle as exported, "
                              "on ort-cpu or ort-cuda")

    def path(self, name: str) -> Path:
        return self.bundle_dir / name

    def to_document(self) -> dict:
        """A deep copy of the YAML document, for a writer that derives a new bundle from this one."""
        return copy.deepcopy(self.raw)


def _field(d: dict, dotted: str, where: Path):
    cur = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise BundleError(f"{where}: field '{dotted}' is missing")
        cur = cur[part]
    return cur


def _int_field(d: dict, dotted: str, where: Path, minimum: int = 1) -> int:
    value = _field(d, dotted, where)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BundleError(f"{where}: field '{dotted}' must be an integer >= {minimum}, got {value!r}")
    return value


def read_yaml_mapping(path: Path) -> dict:
    """A bundle-side YAML file (bundle.yaml, engine.yaml) as a dict, or BundleError naming the file."""
    try:
        raw = load_yaml(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise BundleError(f"{path}: expected a mapping at the top level")
    return raw


def load_manifest(bundle_dir: str | Path, verify_checksums: bool = True) -> Manifest:
    """Read and check a bundle's manifest; with verify_checksums, hash every listed file.

    The sha256 check covers the graph files, not bundle.yaml itself: every field is also checked against
    the graphs' recorded I/O (`check_manifest`), so an edited manifest is refused here, naming
    the field, instead of failing at inference."""
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
    files = _checked_files(bundle_dir, _field(raw, "files", path), verify_checksums, path)
    manifest = _parse(bundle_dir, raw, files, _graphs(raw, files, path), path)
    check_manifest(manifest, path)
    return manifest


def _checked_files(bundle_dir: Path, files, verify_checksums: bool, path: Path) -> dict[str, str]:
    if not isinstance(files, dict):
        raise BundleError(f"{path}: field 'files' must map file names to sha256")
    for name, digest in files.items():
        file_path = bundle_dir / name
        if not file_path.is_file():
            raise BundleError(f"{file_path}: listed in {MANIFEST_NAME} but missing")
        if verify_checksums and sha256_file(file_path) != digest:
            raise BundleError(f"{file_path}: sha256 differs from {MANIFEST_NAME}: the file is corrupted or was "
                              "modified after export; re-export the bundle")
    return {str(k): str(v) for k, v in files.items()}


def _graphs(raw: dict, files: dict[str, str], path: Path) -> dict[str, GraphEntry]:
    graphs = {}
    optional = (c.DENOISE_LOOP_GRAPH,) if c.DENOISE_LOOP_GRAPH in (raw.get("graphs") or {}) else ()
    model = raw.get("model")
    fast = isinstance(model, dict) and model.get("type") == FAST_MODEL_TYPE
    for graph in (c.PREFIX_GRAPH, c.DECODE_STEP_GRAPH) if fast else (c.PREFIX_GRAPH, c.DENOISE_STEP_GRAPH, *optional):
        g = _field(raw, f"graphs.{graph}", path)
        steps = _int_field(raw, f"graphs.{graph}.num_steps", path) if graph == c.DENOISE_LOOP_GRAPH else None
        for key in ("inputs", "outputs"):
            ios = _field(raw, f"graphs.{graph}.{key}", path)
            if not isinstance(ios, list) or not all(isinstance(io, dict) and {"name", "dtype", "shape"} <= set(io)
                                                    and isinstance(io["shape"], list) for io in ios):
                raise BundleError(f"{path}: field 'graphs.{graph}.{key}' must be a list of name/dtype/shape entries")
        graphs[graph] = GraphEntry(_field(raw, f"graphs.{graph}.file", path), tuple(g["inputs"]),
                                   tuple(g["outputs"]), steps)
        if g["file"] not in files:
            raise BundleError(f"{path}: graph file {g['file']} has no checksum in 'files'")
    return graphs


def _parse(bundle_dir: Path, raw: dict, files: dict[str, str], graphs: dict[str, GraphEntry],
           path: Path) -> Manifest:
    try:
        norm_stats = NormStats.from_dict(_field(raw, "normalization", path))
    except NormStatsError as exc:
        raise BundleError(f"{path}: field 'normalization': {exc}") from exc
    cameras = _field(raw, "model.cameras", path)
    if not isinstance(cameras, list):
        raise BundleError(f"{path}: field 'model.cameras' must be a list of camera names, got {cameras!r}")
    optimizations = raw.get("optimizations") or {}
    fixed = optimizations.get("fixed_num_steps") if isinstance(optimizations, dict) else None
    if fixed is not None:
        fixed = _int_field(raw, "optimizations.fixed_num_steps", path)
    rtc = raw.get("rtc", False)  # absent in bundles written before the RTC variant
    if not isinstance(rtc, bool):
        raise BundleError(f"{path}: field 'rtc' must be true or false, got {rtc!r}")
    model = _field(raw, "model", path)
    vocab = model.get("vocab_size") if isinstance(model, dict) else None
    # _graphs read the decode_step graph for exactly the Pi0-FAST bundles
    fast = FastSettings.from_bundle(raw.get("fast"), path) if c.DECODE_STEP_GRAPH in graphs else None
    return Manifest(
        bundle_dir=bundle_dir, raw=raw, model_type=_field(raw, "model.type", path),
        precision=_field(raw, "precision", path), cameras=tuple(cameras),
        image_size=_int_field(raw, "model.image_size", path),
        max_token_len=_int_field(raw, "model.max_token_len", path),
        vocab_size=None if vocab is None else _int_field(raw, "model.vocab_size", path),
        action_dim=_int_field(raw, "model.action_dim", path), state_dim=_int_field(raw, "model.state_dim", path),
        action_horizon=_int_field(raw, "model.action_horizon", path),
        num_steps=0 if fast else _int_field(raw, "model.num_steps", path),
        robot_state_dim=_int_field(raw, "robot.state_dim", path),
        robot_action_dim=_int_field(raw, "robot.action_dim", path),
        norm_stats=norm_stats, tokenizer_file=_field(raw, "tokenizer.file", path), graphs=graphs, files=files,
        fixed_num_steps=fixed, quantization=raw.get("quantization") or None, emulates=raw.get("emulates"),
        deployment=DeploymentRecord.from_bundle(raw.get("deployment"), path), rtc=rtc, fast=fast)


# ---- the checks: every field against the graphs' recorded I/O and the other fields ---------------------

PRECISIONS = ("float32", "float16", "bfloat16")
MODEL_TYPES = ("pi0", "pi05", FAST_MODEL_TYPE)
# Where each model field shows in the graphs: (graph, tensor, axis).
_FIELD_IN_GRAPHS = {
    "model.image_size": ((c.PREFIX_GRAPH, c.IMAGES, 2), (c.PREFIX_GRAPH, c.IMAGES, 3)),
    "model.max_token_len": ((c.PREFIX_GRAPH, c.TOKENS, 1), (c.PREFIX_GRAPH, c.TOKEN_MASKS, 1)),
    "model.cameras": ((c.PREFIX_GRAPH, c.IMAGES, 1), (c.PREFIX_GRAPH, c.IMAGE_MASKS, 1)),
    "model.action_horizon": ((c.DENOISE_STEP_GRAPH, c.X_T, 1), (c.DENOISE_STEP_GRAPH, c.X_NEXT, 1)),
    "model.action_dim": ((c.DENOISE_STEP_GRAPH, c.X_T, 2), (c.DENOISE_STEP_GRAPH, c.X_NEXT, 2)),
    "model.state_dim": ((c.DENOISE_STEP_GRAPH, c.STATE, 1),),
}


def _refuse(path: Path, field: str, problem: str) -> BundleError:
    return BundleError(f"{path}: field '{field}' {problem}; bundle.yaml was edited or is corrupted: "
                       "re-export the bundle (bundle.yaml must describe the graphs as exported)")


def check_manifest(m: Manifest, path: Path) -> None:
    """Refuse a manifest whose fields contradict each other or the graphs' I/O, naming the field."""
    if m.precision not in PRECISIONS:
        raise _refuse(path, "precision", f"is {m.precision!r}, not one of {list(PRECISIONS)}")
    if m.model_type not in MODEL_TYPES:
        raise _refuse(path, "model.type", f"is {m.model_type!r}, not one of {list(MODEL_TYPES)}")
    if not all(isinstance(name, str) and name for name in m.cameras) or len(set(m.cameras)) != len(m.cameras):
        raise _refuse(path, "model.cameras", f"must name each camera once, got {list(m.cameras)}")
    if m.is_fast:
        check_fast_graphs(m, path, _refuse)
    else:
        _check_dims_against_graphs(m, path)
        _check_graph_io(m, path)
    for field, robot, model in (("robot.state_dim", m.robot_state_dim, m.state_dim),
                                ("robot.action_dim", m.robot_action_dim, m.action_dim)):
        if robot > model:
            raise _refuse(path, field, f"is {robot}, more than the model's {model} (robot vectors are padded, "
                                       "never cut)")
    _check_norm_stats(m, path)
    d = m.deployment
    if d is not None and ((d.state.dim, d.action.dim) != (m.robot_state_dim, m.robot_action_dim)
                          or tuple(c.name for c in d.cameras) != m.cameras):
        raise _refuse(path, "deployment", f"gives cameras {[c.name for c in d.cameras]}, state/action dims "
                                          f"{d.state.dim}/{d.action.dim}; model.cameras and robot.* disagree")


def _check_dims_against_graphs(m: Manifest, path: Path) -> None:
    values = {"model.image_size": m.image_size, "model.max_token_len": m.max_token_len,
              "model.cameras": len(m.cameras), "model.action_horizon": m.action_horizon,
              "model.action_dim": m.action_dim, "model.state_dim": m.state_dim}
    for field, places in _FIELD_IN_GRAPHS.items():
        for graph, tensor, axis in places:
            if tensor not in (*m.graphs[graph].input_names, *m.graphs[graph].output_names):
                continue  # pi0.5 has no state input
            shape = m.graphs[graph].io(tensor)["shape"]
            if len(shape) <= axis or shape[axis] != values[field]:
                raise _refuse(path, field, f"gives {values[field]}, but graphs.{graph} {tensor} has shape {shape}")
    loop = m.graphs.get(c.DENOISE_LOOP_GRAPH)
    if m.fixed_num_steps is not None and loop is not None and loop.num_steps != m.fixed_num_steps:
        raise _refuse(path, f"graphs.{c.DENOISE_LOOP_GRAPH}.num_steps",
                      f"is {loop.num_steps}, but optimizations.fixed_num_steps is {m.fixed_num_steps}")


def _check_graph_io(m: Manifest, path: Path) -> None:
    """Each graph's inputs are the contract's, every dtype is known, and the KV cache is the precision's."""
    expected = {c.PREFIX_GRAPH: {s.name for s in c.PREFIX_INPUTS},
                c.DENOISE_STEP_GRAPH: {s.name for s in c.denoise_step_inputs(
                    not m.is_pi05, c.STEP_INDEX in m.graphs[c.DENOISE_STEP_GRAPH].input_names, m.rtc)},
                c.DENOISE_LOOP_GRAPH: {s.name for s in c.denoise_loop_inputs(not m.is_pi05, m.rtc)}}
    kv_dtype = m.precision
    for graph, entry in m.graphs.items():
        if set(entry.input_names) != expected[graph]:
            raise _refuse(path, f"graphs.{graph}.inputs", f"name {sorted(entry.input_names)}, the contract for "
                                                          f"{m.model_type} gives {sorted(expected[graph])}")
        for io in (*entry.inputs, *entry.outputs):
            if io["dtype"] not in (*c.NUMPY_DTYPES, "bfloat16"):
                raise _refuse(path, f"graphs.{graph}", f"gives {io['name']} the unknown dtype {io['dtype']!r}")
            if io["name"] in (c.PAST_KEYS, c.PAST_VALUES) and io["dtype"] != kv_dtype:
                raise _refuse(path, f"graphs.{graph}", f"gives {io['name']} dtype {io['dtype']}, but precision "
                                                       f"{m.precision} means {kv_dtype}")
    prefix, step = m.graphs[c.PREFIX_GRAPH], m.graphs[c.DENOISE_STEP_GRAPH]
    for name in (c.PAST_KEYS, c.PAST_VALUES, c.PREFIX_MASK):
        if prefix.io(name)["shape"] != step.io(name)["shape"]:
            raise _refuse(path, f"graphs.{c.DENOISE_STEP_GRAPH}.inputs",
                          f"give {name} shape {step.io(name)['shape']}, the prefix graph outputs "
                          f"{prefix.io(name)['shape']}")


def _check_norm_stats(m: Manifest, path: Path) -> None:
    stats = m.norm_stats
    first, second = ("mean", "std") if stats.kind == "mean_std" else ("q01", "q99")
    for name, vec, dim in (("state", stats.state, m.robot_state_dim), ("action", stats.action, m.robot_action_dim)):
        if vec.dim != dim:
            raise _refuse(path, f"normalization.{name}", f"has {vec.dim} dims, robot.{name}_dim is {dim}")
        # std 0 is valid: a joint that never moved in the data (the eps in the denominator keeps it finite).
        if stats.kind == "mean_std" and not (vec.b >= 0).all():
            raise _refuse(path, f"normalization.{name}.std", "must be >= 0 in every dim, got "
                                                             f"{vec.b[vec.b < 0].tolist()}")
        if stats.kind == "quantile" and not (vec.b >= vec.a).all():
            raise _refuse(path, f"normalization.{name}.{second}", f"must be >= {first} in every dim")
