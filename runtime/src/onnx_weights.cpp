#include "onnx_weights.h"

#include <cstdint>

#include "error.h"

namespace arvc {
namespace {

// onnx/onnx.proto field numbers of the messages on the way to a tensor's external data
constexpr uint32_t kModelGraph = 7;
constexpr uint32_t kGraphNode = 1, kGraphInitializer = 5;
constexpr uint32_t kNodeAttribute = 5;
constexpr uint32_t kAttributeTensor = 5, kAttributeGraph = 6, kAttributeTensors = 10, kAttributeGraphs = 11;
constexpr uint32_t kTensorExternalData = 13;
constexpr uint32_t kEntryKey = 1, kEntryValue = 2;
constexpr int kMaxDepth = 100;  // protobuf's default recursion limit

enum class Kind { skip, model, graph, node, attribute, tensor, entry };

class Walker {
 public:
  Walker(const std::string &path, std::vector<std::string> &out) : path_(path), out_(out) {}

  void message(const uint8_t *p, const uint8_t *end, Kind kind, int depth) {
    if (depth > kMaxDepth) bad("nests deeper than " + std::to_string(kMaxDepth) + " messages");
    std::string key, value;
    while (p < end) {
      const uint64_t tag = varint(p, end);
      const uint32_t field = static_cast<uint32_t>(tag >> 3);
      switch (tag & 7) {
        case 0: varint(p, end); break;
        case 1: skip(p, end, 8); break;
        case 5: skip(p, end, 4); break;
        case 2: {
          const uint64_t n = varint(p, end);
          if (n > static_cast<uint64_t>(end - p)) bad("has a field longer than the file");
          const uint8_t *body = p;
          p += n;
          if (kind == Kind::entry && field == kEntryKey) key.assign(reinterpret_cast<const char *>(body), n);
          else if (kind == Kind::entry && field == kEntryValue) value.assign(reinterpret_cast<const char *>(body), n);
          else if (const Kind inner = child(kind, field); inner != Kind::skip) message(body, p, inner, depth + 1);
          break;
        }
        default: bad("is not a protobuf message (wire type " + std::to_string(tag & 7) + ")");
      }
    }
    if (kind == Kind::entry && key == "location") out_.push_back(value);
  }

 private:
  // the message a length-delimited field holds, where it leads to external data (skip: it does not)
  static Kind child(Kind kind, uint32_t field) {
    switch (kind) {
      case Kind::model: return field == kModelGraph ? Kind::graph : Kind::skip;
      case Kind::graph: return field == kGraphNode ? Kind::node : field == kGraphInitializer ? Kind::tensor : Kind::skip;
      case Kind::node: return field == kNodeAttribute ? Kind::attribute : Kind::skip;
      case Kind::attribute:
        if (field == kAttributeTensor || field == kAttributeTensors) return Kind::tensor;
        return field == kAttributeGraph || field == kAttributeGraphs ? Kind::graph : Kind::skip;
      case Kind::tensor: return field == kTensorExternalData ? Kind::entry : Kind::skip;
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
  std::vector<std::string> &out_;
};

}  // namespace

std::vector<std::string> external_data_locations(const std::string &model, const std::string &path) {
  std::vector<std::string> out;
  const auto *p = reinterpret_cast<const uint8_t *>(model.data());
  Walker(path, out).message(p, p + model.size(), Kind::model, 1);
  return out;
}

}  // namespace arvc
