"""The fixed Euler schedule (docs/model.md, "Sampling"), shared by the reference, the export and the runtime.

openpi accumulates t in float32 (`time = 1.0; time += dt` while `time >= -dt / 2`), so the t values
are 1.0, 0.9, 0.79999995, 0.6999999, ..., 0.09999993 rather than 1 - k/n: we reproduce the accumulation bit for bit.
"""

from __future__ import annotations

import numpy as np


def euler_schedule(num_steps: int) -> tuple[np.ndarray, np.float32]:
    """-> (t for each step, float32 [num_steps]; dt, float32 = -1/num_steps)."""
    if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    dt = np.float32(-1.0 / num_steps)
    times = []
    t = np.float32(1.0)
    while t >= -dt / np.float32(2):
        times.append(t)
        t = np.float32(t + dt)
    return np.asarray(times[:num_steps], dtype=np.float32), dt
