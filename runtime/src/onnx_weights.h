// Where an ONNX graph reads its weights from: the "location" of every external-data tensor it stores (the graph's
// initializers and its nodes' tensor attributes, subgraphs included: what runtime/plan_graphs.py _tensors walks),
// read from the protobuf wire format itself, before ONNX Runtime opens anything the graph names.
#pragma once

#include <string>
#include <vector>

namespace arvc {

// The locations in an ONNX ModelProto's bytes; ARVC_ERR_INTEGRITY naming path when the bytes are not a protobuf
// message or nest deeper than protobuf's 100 levels.
std::vector<std::string> external_data_locations(const std::string &model, const std::string &path);

}  // namespace arvc
