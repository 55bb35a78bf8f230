"""Plan compiler: checkpoint -> plan (ONNX graphs, engines, manifest). Arrives with the compiler milestone."""
