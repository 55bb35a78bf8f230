// runtime/manifest.py in C++: every section of manifest.json with its fields' JSON types, ranges and defaults, the
// relations between them (docs/plan-validation.md), so that this reader accepts exactly what Python's accepts
// (tests/plan_corpus.json holds the two to it) and nothing the runtime sizes a buffer by is unchecked.
#pragma once

#include <string>

#include "json_text.h"
#include "plan.h"

namespace arvc {

// The manifest's fields (format, schema_version and the seal already checked) into plan, except dir and the
// graphs' paths: ARVC_ERR_PLAN naming mpath, the field and the fix.
void read_manifest_fields(const json &manifest, const std::string &mpath, Plan &plan);

// runtime/manifest.py is_plain_name: [A-Za-z0-9_-][A-Za-z0-9._-]{0,254}, over the whole string (NUL included).
bool is_plain_name(const std::string &name);

}  // namespace arvc
