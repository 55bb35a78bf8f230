// The one exception type inside the C runtime: capi.cpp turns it into an arvc_status and the message
// arvc_last_error() returns. Messages name the problem and the fix, as the Python runtime's do.
#pragma once

#include <stdexcept>
#include <string>

#include "arvc.h"

namespace arvc {

struct Error : std::runtime_error {
  arvc_status status;
  Error(arvc_status s, const std::string &message) : std::runtime_error(message), status(s) {}
};

[[noreturn]] inline void fail(arvc_status s, const std::string &message) { throw Error(s, message); }

}  // namespace arvc
