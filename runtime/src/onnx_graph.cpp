#include "onnx_graph.h"

#include <cstdint>

#include "error.h"

namespace arvc {
namespace {

// onnx/onnx.proto field numbers of the messages on the way to a tensor's external data and to the graph's
// declared inputs and outputs
constexpr uint32_t kModelGraph = 7;
constexpr uint32_t kGraphNode = 1, kGraphInitializer = 5, kGraphInput = 11, kGraphOutput = 12;
constexpr uint32_t kNodeAttribute = 5;
constexpr uint32_t kAttributeTensor = 5, kAttributeGraph = 6, kAttributeTensors = 10, kAttributeGraphs = 11;
constexpr uint32_t kTensorExternalData = 13;
constexpr uint32_t kEntryKey = 1, kEntryValue = 2;
constexpr uint32_t kValueName = 1, kValueType = 2;
constexpr uint32_t kTypeTensor = 1;
constexpr uint32_t kTypeOthers[] = {4, 5, 8, 9};  // sequence, map, sparse tensor, optional: TypeProto's oneof
constexpr uint32_t kTensorTypeElem = 1, kTensorTypeShape = 2, kShapeDim = 1, kDimValue = 1, kDimParam = 2;
constexpr int kMaxDepth = 100;  // protobuf's default recursion limit

enum class Kind { skip, model, graph, subgraph, node, attribute, tensor, entry, value, type, tensor_type, shape, dim };

// Repeated occurrences of a message field merge (scalars: the last wins; repeated fields: appended) and a oneof
// member clears the others, as protobuf's own parser does, so this reads what onnx.ModelProto.FromString reads.
class Walker {
 public:
  Walker(const std::string &path, GraphFile &out) : path_(path), out_(out) {}

  void message(const uint8_t *p, const uint8_t *end, Kind kind, int depth, TensorSpec *value = nullptr) {
    if (depth > kMaxDepth) bad("nests deeper than " + std::to_string(kMaxDepth) + " messages");
    std::string key, entry_value;
    int64_t dim = -1;
    while (p < end) {
      const uint64_t tag = varint(p, end);
      const uint32_t field = static_cast<uint32_t>(tag >> 3);
      switch (tag & 7) {
        case 0: {
          const uint64_t v = varint(p, end);
          if (kind == Kind::tensor_type && field == kTensorTypeElem) value->type = static_cast<int32_t>(v);
          else if (kind == Kind::dim && field == kDimValue) dim = static_cast<int64_t>(v);
          break;
        }
        case 1: skip(p, end, 8); break;
        case 5: skip(p, end, 4); break;
        case 2: {
          const uint64_t n = varint(p, end);
          if (n > static_cast<uint64_t>(end - p)) bad("has a field longer than the file");
          const uint8_t *body = p;
          p += n;
          const auto text = [&] { return std::string(reinterpret_cast<const char *>(body), n); };  // not raw weights
          if (kind == Kind::entry && field == kEntryKey) key = text();
          else if (kind == Kind::entry && field == kEntryValue) entry_value = text();
          else if (kind == Kind::value && field == kValueName) value->name = text();
          else if (kind == Kind::dim && field == kDimParam) dim = -1;
          else if (kind == Kind::type && is_other_type(field)) *value = {value->name, 0, {}};
          else if (kind == Kind::graph && (field == kGraphInput || field == kGraphOutput)) {
            auto &list = field == kGraphInput ? out_.inputs : out_.outputs;
            list.push_back({});
            message(body, p, Kind::value, depth + 1, &list.back());
          } else if (const Kind inner = child(kind, field); inner != Kind::skip) {
            message(body, p, inner, depth + 1, value);
          }
          break;
        }
        default: bad("is not a protobuf message (wire type " + std::to_string(tag & 7) + ")");
      }
    }
    if (kind == Kind::entry && key == "location") out_.weight_locations.push_back(entry_value);
    if (kind == Kind::dim) value->shape.push_back(dim);
  }

 private:
  static bool is_other_type(uint32_t field) {
    for (const uint32_t f : kTypeOthers)
      if (f == field) return true;
    return false;
  }

  // the message a length-delimited field holds, where it leads to what is read (skip: it does not)
  static Kind child(Kind kind, uint32_t field) {
    switch (kind) {
      case Kind::model: return field == kModelGraph ? Kind::graph : Kind::skip;
      case Kind::graph: case Kind::subgraph:
        return field == kGraphNode ? Kind::node : field == kGraphInitializer ? Kind::tensor : Kind::skip;
      case Kind::node: return field == kNodeAttribute ? Kind::attribute : Kind::skip;
      case Kind::attribute:
        if (field == kAttributeTensor || field == kAttributeTensors) return Kind::tensor;
        return field == kAttributeGraph || field == kAttributeGraphs ? Kind::subgraph : Kind::skip;
      case Kind::tensor: return field == kTensorExternalData ? Kind::entry : Kind::skip;
      case Kind::value: return field == kValueType ? Kind::type : Kind::skip;
      case Kind::type: return field == kTypeTensor ? Kind::tensor_type : Kind::skip;
      case Kind::tensor_type: return field == kTensorTypeShape ? Kind::shape : Kind::skip;
      case Kind::shape: return field == kShapeDim ? Kind::dim : Kind::skip;
      default: return Kind::skip;
    }
  }

  uint64_t varint(const uint8_t *&p, const uint8_t *end) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p >= end) bad("ends inside a number");
      const uint8_t b = *p++;
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    bad("holds a number longer than 10 bytes");
  }

  void skip(const uint8_t *&p, const uint8_t *end, size_t n) {
    if (static_cast<size_t>(end - p) < n) bad("ends inside a field");
    p += n;
  }

  [[noreturn]] void bad(const std::string &why) const {
    fail(ARVC_ERR_INTEGRITY, path_ + ": integrity check failed: not an ONNX graph (it " + why + "); the plan is corrupted, recompile it");
  }

  const std::string &path_;
  GraphFile &out_;
};

}  // namespace

GraphFile read_graph_file(const std::string &model, const std::string &path) {
  GraphFile out;
  const auto *p = reinterpret_cast<const uint8_t *>(model.data());
  Walker(path, out).message(p, p + model.size(), Kind::model, 1);
  return out;
}

}  // namespace arvc
