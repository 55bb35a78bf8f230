// Reads plans as the C runtime does and says what it decided, one JSON line per plan folder:
//   plan_check [--stdin] [PLAN...]     (--stdin: one folder per line of standard input, after the arguments)
//   {"dir": PLAN, "describe": status, "open": status, "error": "the first refusal's message"}
// describe: arvc_plan_describe with every file's SHA-256; open: arvc_open (files verified, graphs loaded and
// checked against the manifest) then arvc_close. tests/test_plan_corpus_c.py runs the shared corpus through it, and
// tools/fuzz_plans.py runs it under AddressSanitizer and UBSan: it must never fail by itself.
#include <arvc.h>

#include <cstdio>
#include <iostream>
#include <string>

namespace {

std::string quoted(const std::string &s) {  // a JSON string; bytes outside ASCII as \u00XX, so any line parses
  static const char *hex = "0123456789abcdef";
  std::string out = "\"";
  for (const unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c >= 0x7F) {
      out += "\\u00";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

void check(const std::string &dir) {
  const char *description = nullptr;
  const arvc_status described = arvc_plan_describe(dir.c_str(), 1, &description);
  std::string error = described == ARVC_OK ? "" : arvc_last_error();
  arvc_options options = arvc_options_default();
  options.threads = 1;
  arvc_session *session = nullptr;
  const arvc_status opened = arvc_open(dir.c_str(), &options, &session);
  if (error.empty() && opened != ARVC_OK) error = arvc_last_error();
  arvc_close(session);
  std::cout << "{\"dir\": " << quoted(dir) << ", \"describe\": " << described << ", \"open\": " << opened << ", \"error\": " << quoted(error)
            << "}" << std::endl;
}

}  // namespace

int main(int argc, char **argv) {
  bool from_stdin = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--stdin") from_stdin = true;
    else check(arg);
  }
  if (from_stdin)
    for (std::string line; std::getline(std::cin, line);)
      if (!line.empty()) check(line);
  return 0;
}
