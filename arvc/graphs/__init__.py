"""The plan's ONNX graphs, built op by op from arvc.model's math (``lower_dit.OnnxDitOps``).

Below the runtime so that a backend can derive the form it needs from a plan at load time (TensorRT's
plugin graph: ``lower_plugin``), and below the compiler, which writes the canonical graphs into plans."""
