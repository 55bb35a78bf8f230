// manifest.json as text: read without following links or blocking, parsed only when its nesting and integers
// are ones both readers represent, and written back exactly as Python's runtime/plan.py canonical_json writes it
// (the seal is a hash of that text, so the C reader must produce it byte for byte).
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace arvc {

using json = nlohmann::json;

constexpr size_t kMaxManifestBytes = size_t{16} << 20;  // docs/plan-validation.md
constexpr int kMaxJsonDepth = 64;

// The bytes of PATH, which must be a regular file (lstat: no link, FIFO or device) of at most max_bytes.
// Throws arvc::Error (ARVC_ERR_INTEGRITY) naming the path.
std::string read_regular_file(const std::string &path, size_t max_bytes);

// The JSON value of text; ARVC_ERR_INTEGRITY when it is not UTF-8 JSON, nests deeper than kMaxJsonDepth or holds
// an integer outside -2^63..2^64-1 (checked before parsing: no deep recursion on hostile input).
json parse_manifest_json(const std::string &text, const std::string &path);

// json.dumps(value, sort_keys=True, indent=2, allow_nan=False) + "\n", as Python writes it (floats as repr).
std::string canonical_json(const json &value);

// Python's repr of a finite float: the shortest digits that read back as v, in repr's layout.
std::string python_float_repr(double v);

}  // namespace arvc
