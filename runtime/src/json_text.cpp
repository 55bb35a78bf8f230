#include "json_text.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "error.h"
#include "regular_file.h"

namespace arvc {
namespace {

// An integer literal's digits must fit what nlohmann keeps exactly (int64 or uint64); a longer one would be read
// as a float and written back differently, so the readers would disagree on the seal.
bool integer_fits_64_bits(const std::string &token) {
  const bool negative = token[0] == '-';
  std::string digits = token.substr(negative ? 1 : 0);
  digits.erase(0, std::min(digits.find_first_not_of('0'), digits.size() - 1));
  const std::string limit = negative ? "9223372036854775808" : "18446744073709551615";
  return digits.size() < limit.size() || (digits.size() == limit.size() && digits <= limit);
}

bool is_number_char(char c) { return (c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E'; }

// Before parsing: the nesting depth (the parser and the checks recurse over it) and the integers' range.
void prescan(const std::string &text, const std::string &path) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth)
        fail(ARVC_ERR_INTEGRITY, path + ": integrity check failed: the JSON nests more than " + std::to_string(kMaxJsonDepth) +
                                     " levels deep; no plan does, the file is corrupted or forged, recompile the plan");
    } else if (c == ']' || c == '}') {
      --depth;
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      size_t end = i;
      while (end < text.size() && is_number_char(text[end])) ++end;
      const std::string token = text.substr(i, end - i);
      if (token.find_first_of(".eE") == std::string::npos && token != "-" && !integer_fits_64_bits(token))
        fail(ARVC_ERR_INTEGRITY, path + ": integrity check failed: the integer " + token.substr(0, 24) + (token.size() > 24 ? "..." : "") +
                                     " does not fit 64 bits; no plan holds one, the file is corrupted or forged, recompile the plan");
      i = end - 1;
    }
  }
}

void append_escaped(const std::string &s, std::string &out) {  // Python's ensure_ascii form
  static const char *hex = "0123456789abcdef";
  auto u = [&](unsigned cp) {
    out += "\\u";
    for (int shift = 12; shift >= 0; shift -= 4) out += hex[(cp >> shift) & 15];
  };
  out += '"';
  for (size_t i = 0; i < s.size();) {
    const unsigned char b = static_cast<unsigned char>(s[i]);
    // the parser accepted only valid UTF-8: the lead byte says how many continuation bytes follow
    const int extra = b < 0x80 ? 0 : b < 0xE0 ? 1 : b < 0xF0 ? 2 : 3;
    unsigned cp = extra == 0 ? b : b & (0x3F >> extra);
    for (int k = 1; k <= extra; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
    i += 1 + extra;
    switch (cp) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (cp >= 0x20 && cp < 0x7F) out += static_cast<char>(cp);
        else if (cp < 0x10000) u(cp);
        else {
          u(0xD800 + ((cp - 0x10000) >> 10));
          u(0xDC00 + ((cp - 0x10000) & 0x3FF));
        }
    }
  }
  out += '"';
}

void append_canonical(const json &j, int level, std::string &out) {
  const std::string indent(2 * (level + 1), ' ');
  switch (j.type()) {
    case json::value_t::null: out += "null"; return;
    case json::value_t::boolean: out += j.get<bool>() ? "true" : "false"; return;
    case json::value_t::number_integer: out += std::to_string(j.get<int64_t>()); return;
    case json::value_t::number_unsigned: out += std::to_string(j.get<uint64_t>()); return;
    case json::value_t::number_float: out += python_float_repr(j.get<double>()); return;
    case json::value_t::string: append_escaped(j.get_ref<const std::string &>(), out); return;
    case json::value_t::array:
    case json::value_t::object: {
      const bool object = j.is_object();
      if (j.empty()) {
        out += object ? "{}" : "[]";
        return;
      }
      out += object ? "{\n" : "[\n";
      bool first = true;
      for (auto it = j.begin(); it != j.end(); ++it) {
        out += first ? "" : ",\n";
        first = false;
        out += indent;
        if (object) {
          append_escaped(it.key(), out);
          out += ": ";
        }
        append_canonical(*it, level + 1, out);
      }
      out += "\n" + indent.substr(2) + (object ? "}" : "]");
      return;
    }
    default: fail(ARVC_ERR_PLAN, "a manifest value of a kind JSON text does not hold");
  }
}

}  // namespace

std::string read_regular_file(const std::string &path, size_t max_bytes) {
  // lstat first: opening a FIFO would block, a link could lead out of the plan
  struct stat st {};
  if (lstat(path.c_str(), &st) != 0) fail(ARVC_ERR_PLAN, path + ": cannot read it (" + std::strerror(errno) + ")");
  if (!S_ISREG(st.st_mode))
    fail(ARVC_ERR_INTEGRITY, path + ": integrity check failed: not a regular file (a link, a folder, a FIFO or a device); a plan holds "
                                    "its files itself, recompile it");
  const auto too_large = [&](const std::string &size) {
    fail(ARVC_ERR_INTEGRITY, path + ": integrity check failed: " + size + " bytes, more than " + std::to_string(max_bytes >> 20) +
                                 " MiB; the plan is corrupted, recompile it");
  };
  if (static_cast<uint64_t>(st.st_size) > max_bytes) too_large(std::to_string(st.st_size));
  const RegularFile f(path);
  if (!f) fail(ARVC_ERR_INTEGRITY, path + ": cannot open it as a regular file (" + std::strerror(errno) + ")");
  std::string text;
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = read(f.fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail(ARVC_ERR_PLAN, path + ": cannot read it (" + std::strerror(errno) + ")");
    if (n == 0) break;
    if (text.size() + static_cast<size_t>(n) > max_bytes) too_large("more than " + std::to_string(max_bytes));  // grew since the lstat
    text.append(buf, static_cast<size_t>(n));
  }
  return text;
}

json parse_manifest_json(const std::string &text, const std::string &path) {
  prescan(text, path);
  try {
    return json::parse(text);
  } catch (const json::exception &e) {
    fail(ARVC_ERR_INTEGRITY, path + ": integrity check failed: not valid JSON (" + e.what() + "); the plan is corrupted, recompile it with `arvc compile`");
  }
}

std::string canonical_json(const json &value) {
  std::string out;
  append_canonical(value, 0, out);
  return out + "\n";
}

std::string python_float_repr(double v) {
  if (!std::isfinite(v)) fail(ARVC_ERR_PLAN, "a manifest number is not finite");
  if (v == 0) return std::signbit(v) ? "-0.0" : "0.0";
  // The fewest digits p that read back as v: the correctly rounded p-digit decimal, or where v's rounding interval
  // is lopsided (a power of two) its neighbour; among several, the closest (as Python's dtoa, mode 0).
  std::string digits;
  int exponent = 0;  // v = digits * 10^exponent
  for (int p = 1; p <= 17 && digits.empty(); ++p) {
    char buf[48];
    std::snprintf(buf, sizeof buf, "%.*e", p - 1, std::fabs(v));
    const char *e = std::strchr(buf, 'e');
    std::string mantissa(static_cast<const char *>(buf), e);
    mantissa.erase(std::remove(mantissa.begin(), mantissa.end(), '.'), mantissa.end());
    const long long m = std::stoll(mantissa);
    const int exp = std::atoi(e + 1) - (p - 1);
    for (const long long candidate : {m, m - 1, m + 1}) {
      const std::string text = std::to_string(candidate) + "e" + std::to_string(exp);
      if (candidate > 0 && std::strtod(text.c_str(), nullptr) == std::fabs(v)) {
        digits = std::to_string(candidate);
        exponent = exp;
        break;
      }
    }
  }
  while (digits.size() > 1 && digits.back() == '0') {
    digits.pop_back();
    ++exponent;
  }
  const int n = static_cast<int>(digits.size()), point = n + exponent;  // v = 0.digits * 10^point
  std::string out = v < 0 ? "-" : "";
  if (point <= -4 || point > 16) {  // repr's switch to exponent form
    out += digits.substr(0, 1) + (n > 1 ? "." + digits.substr(1) : "");
    const int e = point - 1;
    char buf[16];
    std::snprintf(buf, sizeof buf, "e%c%02d", e < 0 ? '-' : '+', std::abs(e));
    return out + buf;
  }
  if (point <= 0) return out + "0." + std::string(-point, '0') + digits;
  if (point >= n) return out + digits + std::string(point - n, '0') + ".0";
  return out + digits.substr(0, point) + "." + digits.substr(point);
}

}  // namespace arvc
