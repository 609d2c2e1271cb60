"""`pi0edge quantize`: float32 bundle -> INT8 / FP8 Q/DQ bundle (docs/quantization.md).

calibration.py: what the float32 policy's graphs see and the activation ranges; qdq.py: the streaming Q/DQ
graph writer; bundle.py: the new bundle and its measured error; command.py: the CLI.
"""

from pi0edge.export.quantize.bundle import (
    MODES,
    QuantizeOptions,
    QuantizeReport,
    boundary_gemms,
    check_source,
    has_qdq,
    quantize_bundle,
)
from pi0edge.export.quantize.calibration import collect_calibration, run_chunk_recording
from pi0edge.export.quantize.command import FULL_SIZE_ERRORS, register_quantize

__all__ = ["FULL_SIZE_ERRORS", "MODES", "QuantizeOptions", "QuantizeReport", "boundary_gemms",
           "check_source", "collect_calibration", "has_qdq", "quantize_bundle", "register_quantize",
           "run_chunk_recording"]
