"""Writing ONNX: the graphs' export from the model (graphs.py), external weight data (external_data.py), the
unrolled loop graph (loop_graph.py) and bfloat16 emulation (bf16_emulation.py)."""
