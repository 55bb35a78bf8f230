// The one exception type inside the C runtime: capi.cpp turns it into an arvc_status and the message
// arvc_last_error() returns. Messages name the problem and the fix, as the Python runtime's do.
#pragma once

#include <cstddef>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "arvc.h"

namespace arvc {

struct Error : std::runtime_error {
  arvc_status status;
  Error(arvc_status s, const std::string &message) : std::runtime_error(message), status(s) {}
};

[[noreturn]] inline void fail(arvc_status s, const std::string &message) { throw Error(s, message); }

// The size of a buffer of what: the product of factors, refused when it does not fit a size_t (no such buffer
// can exist, and a wrapped product would make a small one that is then written past).
inline size_t buffer_size(std::initializer_list<size_t> factors, const std::string &what) {
  size_t n = 1;
  for (const size_t f : factors)
    if (__builtin_mul_overflow(n, f, &n)) fail(ARVC_ERR_OUT_OF_MEMORY, what + " would need more bytes than this machine can address");
  return n;
}

}  // namespace arvc
