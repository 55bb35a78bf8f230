// What an ONNX graph file says of itself, read from the protobuf wire format before ONNX Runtime opens it: where
// it reads its weights (the "location" of every external-data tensor: the graph's initializers and its nodes'
// tensor attributes, subgraphs included, what runtime/plan_graphs.py _tensors walks) and the inputs and outputs
// the top-level graph declares. ONNX Runtime would read any file of the folder a graph names, and would size
// tensors (or abort) on a declared shape before arvc could compare it with the manifest.
#pragma once

#include <string>
#include <vector>

#include "plan_graphs.h"

namespace arvc {

struct GraphFile {
  std::vector<std::string> weight_locations;
  // As declared: a dimension without dim_value is -1, a value without a tensor type has type 0 and no shape
  // (neither ever equals what a manifest makes, as in runtime/plan_graphs.py _signature).
  std::vector<TensorSpec> inputs, outputs;
};

// ARVC_ERR_INTEGRITY naming path when the bytes are not a protobuf message or nest deeper than protobuf's 100 levels.
GraphFile read_graph_file(const std::string &model, const std::string &path);

}  // namespace arvc
