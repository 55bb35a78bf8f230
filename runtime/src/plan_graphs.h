// What the manifest makes each graph's inputs and outputs (docs/plan-validation.md, step 7): the names, element
// types and static shapes arvc/graphs/lower_dit.py, lower_kv.py and compiler/lower_traced.py give them. A graph
// that differs (another plan's, another stage's, or one whose manifest was edited and resealed) is refused before
// the runtime sizes a buffer by it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "plan.h"

namespace arvc {

struct TensorSpec {
  std::string name;
  int type;  // ONNX TensorProto element type (the same codes as ONNXTensorElementDataType)
  std::vector<int64_t> shape;
};

struct GraphSpec {
  std::vector<TensorSpec> inputs, outputs;
};

enum class Stage { text, dit, vae_first, vae, text_encoder };

GraphSpec expected_graph(const Plan &plan, Stage stage);

// "float32 [1, 16, 3, 16, 16]"
std::string describe_tensor(int type, const std::vector<int64_t> &shape);

}  // namespace arvc
