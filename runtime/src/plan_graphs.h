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

// ARVC_ERR_INTEGRITY naming graph unless have (a graph's inputs or outputs: kind) is exactly want: names, element
// types, static shapes. Reported as runtime/plan_graphs.py _compare does: a missing one, an extra one, a wrong one.
void check_declared(const std::vector<TensorSpec> &have, const std::vector<TensorSpec> &want, const std::string &graph, const char *kind);

// "float32 [1, 16, 3, 16, 16]"
std::string describe_tensor(int type, const std::vector<int64_t> &shape);

}  // namespace arvc
