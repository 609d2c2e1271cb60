"""The denoise loop as one graph: the step graph unrolled over the fixed schedule (whole-loop capture).

Why a third graph: ONNX Runtime captures one CUDA graph per session run (`enable_cuda_graph`). With the
loop in one graph, a chunk's num_steps steps replay as ONE CUDA graph, the noise read in once and the
chunk written out once; on a CPU the chunk is one session call instead of num_steps.

Built by ONNX surgery on the exported step graph, not by tracing again, so the same function serves the
plain export, a quantized (Q/DQ) step graph and any later rewrite of it:
- the step's nodes are copied num_steps times (node outputs renamed `step<k>/...`); the weights stay
  shared initializers, so the loop graph holds one copy of the action expert, not num_steps, and that
  copy is the step graph's own `denoise_step.onnx.data` (referenced, not duplicated on disk);
- copy k reads copy k-1's `x_next` as its `x_t`; the last copy's `x_next` is the output `actions`;
- copy k's `step_index` is the constant [k] of shape [1]. This needs `precompute_time` (the step graph's
  only use of step_index is the per-step tables, whose rows broadcast over the batch): ONNX Runtime then
  folds every table lookup into a constant, so the loop runs no Gather at all (pi0.5: 111 per step).
- nodes whose inputs are the same at every step (the attention bias and RoPE tables, computed from
  prefix_mask; constants) are hoisted out and computed once per chunk;
- nodes that feed no output (the `velocity` head of test bundles) are dropped.
docs/model.md, "Sampling": x_{k+1} = x_k + dt v(x_k, t_k), t_0 = 1, dt = -1/num_steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pi0edge import contract as c
from pi0edge.errors import BundleError


class LoopGraphError(BundleError):
    """The step graph cannot be unrolled into a loop graph (the message says why)."""


def unroll_step_graph(step, num_steps: int):
    """The step ModelProto (loaded with or without its external data) rewritten IN PLACE into the loop graph,
    and returned: the weights are not copied, which at full size keeps the export's peak memory down."""
    import onnx
    from onnx import numpy_helper

    if num_steps < 1:
        raise LoopGraphError(f"num_steps must be >= 1, got {num_steps}")
    graph = step.graph
    inputs = {i.name: i for i in graph.input}
    if c.STEP_INDEX not in inputs or c.TIME in inputs:
        raise LoopGraphError(f"the step graph takes {sorted(inputs)}: only a step-indexed graph (precompute_time) "
                             "has its schedule inside and can be unrolled")
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        raise LoopGraphError("the step graph has control flow (If/Loop/Scan): not unrolled")
    nodes = _live_nodes(graph, c.X_NEXT)
    shared = {t.name for t in graph.initializer} | (set(inputs) - {c.X_T, c.STEP_INDEX})
    invariant, per_step = _hoist_invariants(nodes, shared)
    shared |= {v for n in invariant for v in n.output}

    loop_nodes, index_constants, x_name = [_copy(n) for n in invariant], [], c.X_T
    for k in range(num_steps):
        index_name = f"step{k}/{c.STEP_INDEX}"
        index_constants.append(numpy_helper.from_array(np.array([k], np.int64), index_name))
        last = k == num_steps - 1
        rename = {c.X_T: x_name, c.STEP_INDEX: index_name, c.X_NEXT: c.ACTIONS if last else f"step{k}/{c.X_NEXT}"}

        def name(value: str, k=k, rename=rename) -> str:
            if not value or value in shared:
                return value  # "" is an omitted optional input
            return rename.get(value, f"step{k}/{value}")

        for node in per_step:
            copy = _copy(node)
            copy.input[:] = [name(v) for v in node.input]
            copy.output[:] = [name(v) for v in node.output]
            copy.name = f"step{k}/{node.name}" if node.name else ""
            loop_nodes.append(copy)
        x_name = rename[c.X_NEXT]

    actions = _copy(next(o for o in graph.output if o.name == c.X_NEXT))
    actions.name = c.ACTIONS
    loop_inputs = [_copy(inputs[s.name]) for s in c.denoise_loop_inputs(c.STATE in inputs, c.RTC_LEFTOVER in inputs)
                   if s.name in inputs]
    used = {v for n in nodes for v in n.input}
    for i in reversed(range(len(graph.initializer))):  # the velocity head's weights, if any, go
        if graph.initializer[i].name not in used:
            del graph.initializer[i]
    graph.initializer.extend(index_constants)
    for field, values in ((graph.node, loop_nodes), (graph.input, loop_inputs), (graph.output, [actions])):
        del field[:]
        field.extend(values)
    del graph.value_info[:]  # the step's intermediate shapes; ONNX Runtime infers the copies' own
    graph.name = f"{graph.name or 'denoise_step'}_x{num_steps}"
    step.producer_name, step.doc_string = "pi0edge", f"denoise_step unrolled over {num_steps} Euler steps"
    return step


def _copy(message):
    out = type(message)()
    out.CopyFrom(message)
    return out


def _hoist_invariants(nodes: list, shared: set[str]) -> tuple[list, list]:
    """Split the step's nodes into those whose inputs are all the same at every step (the attention bias
    and RoPE tables from prefix_mask, constants): computed once, before the first step, and the rest."""
    known, invariant, per_step = set(shared), [], []
    for node in nodes:
        if all(not v or v in known for v in node.input):
            invariant.append(node)
            known.update(node.output)
        else:
            per_step.append(node)
    return invariant, per_step


def _live_nodes(graph, output: str) -> list:
    """The nodes `output` depends on, in their original (topological) order."""
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output}
    keep, todo = set(), [output]
    while todo:
        i = producer.get(todo.pop())
        if i is None or i in keep:
            continue
        keep.add(i)
        todo.extend(v for v in graph.node[i].input if v)
    return [n for i, n in enumerate(graph.node) if i in keep]


def write_loop_graph(step_path: Path, loop_path: Path, num_steps: int) -> None:
    """Unroll the step graph file into loop_path, beside it. The two graphs share one copy of the weights on
    disk: a step graph whose weights are inline first gets them moved to `<step>.onnx.data` (page-aligned),
    and the loop graph references that file (a runtime loads one graph or the other, never both)."""
    import onnx

    from pi0edge.export.onnx.external_data import move_to_external_data

    step_path, loop_path = Path(step_path), Path(loop_path)
    if step_path.parent.resolve() != loop_path.parent.resolve():
        raise LoopGraphError(f"{loop_path}: must sit beside {step_path}, whose weights it reads by reference")
    try:
        step = onnx.load(str(step_path), load_external_data=False)
    except Exception as exc:  # OSError, protobuf's DecodeError: name the file either way
        raise LoopGraphError(f"{step_path}: cannot read the step graph ({exc})") from exc
    if not any(t.data_location == onnx.TensorProto.EXTERNAL for t in step.graph.initializer):
        move_to_external_data(step, step_path.with_name(step_path.name + ".data"))
        onnx.save_model(step, str(step_path))
        onnx.checker.check_model(str(step_path))
    loop = unroll_step_graph(step, num_steps)  # `step` itself, rewritten; its weights stay on disk
    onnx.save_model(loop, str(loop_path))
    del loop, step
    onnx.checker.check_model(str(loop_path))
