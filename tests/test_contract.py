"""The graph contract's rules, owned once in core/contract.py and used by every backend and tool."""

from __future__ import annotations

import numpy as np

from pi0edge import contract as c
from pi0edge.schedule import euler_schedule

NUM_STEPS = 4
BATCH = 3


def test_step_time_feeds_give_a_step_indexed_graph_only_its_step_index():
    times, dt = euler_schedule(NUM_STEPS)
    inputs = [s.name for s in c.denoise_step_inputs(has_state_input=True, time_as_step_index=True)]
    feeds = c.step_time_feeds(inputs, 2, times, dt, BATCH)
    assert list(feeds) == [c.STEP_INDEX]
    assert feeds[c.STEP_INDEX].dtype == np.int64 and feeds[c.STEP_INDEX].tolist() == [2] * BATCH


def test_step_time_feeds_give_a_plain_step_graph_the_schedule_time_and_dt():
    times, dt = euler_schedule(NUM_STEPS)
    inputs = [s.name for s in c.denoise_step_inputs(has_state_input=False, time_as_step_index=False)]
    feeds = c.step_time_feeds(inputs, 1, times, dt, BATCH)
    assert sorted(feeds) == sorted([c.TIME, c.DT])
    assert feeds[c.TIME].dtype == feeds[c.DT].dtype == np.float32
    assert feeds[c.TIME].shape == feeds[c.DT].shape == (BATCH,)
    assert np.all(feeds[c.TIME] == np.float32(times[1])) and np.all(feeds[c.DT] == np.float32(dt))


def test_every_dtype_the_contract_names_has_a_host_dtype_but_the_kv_placeholder():
    specs = (*c.PREFIX_INPUTS, *c.PREFIX_OUTPUTS, *c.denoise_step_inputs(True, True),
             *c.denoise_step_inputs(True, False), *c.denoise_step_outputs(True), *c.DENOISE_LOOP_OUTPUTS)
    assert {s.dtype for s in specs} - {c.KV_DTYPE} <= set(c.NUMPY_DTYPES)
    assert {"float32", "float16"} <= set(c.NUMPY_DTYPES) and "bfloat16" not in c.NUMPY_DTYPES
