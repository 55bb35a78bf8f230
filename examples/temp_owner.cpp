#include "temp_owner.h"

#include <dirent.h>
#include <openssl/evp.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cctype>
#include <climits>
#include <cstdio>
#include <fstream>
#include <random>
#include <regex>
#include <sstream>

namespace arvc_tool {
namespace {

std::string read_stripped(const std::string &path) {  // Python's open(path).read().strip(); "" when unreadable
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  std::string t = f ? s.str() : "";
  const auto first = t.find_first_not_of(" \t\n\r\f\v"), last = t.find_last_not_of(" \t\n\r\f\v");
  return first == std::string::npos ? "" : t.substr(first, last - first + 1);
}

// clock ticks after boot at which pid started (/proc/<pid>/stat field 22); -1 when there is no such process
long long process_start(long long pid) {
  const std::string stat = read_stripped("/proc/" + std::to_string(pid) + "/stat");
  const auto paren = stat.rfind(')');  // the command name before it may hold spaces
  if (paren == std::string::npos) return -1;
  std::istringstream fields(stat.substr(paren + 1));
  std::string field;
  for (int i = 0; i < 20 && fields >> field; ++i) {}
  return fields ? std::stoll(field) : -1;
}

std::string this_host() {  // sha256(hostname \0 machine id \0 pid namespace), 12 hex digits
  char name[HOST_NAME_MAX + 1] = {};
  gethostname(name, sizeof name - 1);
  char ns[256] = {};
  const ssize_t n = readlink("/proc/self/ns/pid", ns, sizeof ns - 1);
  const std::string key = std::string(name) + '\0' + read_stripped("/etc/machine-id") + '\0' + (n > 0 ? std::string(ns, n) : "");
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(key.data(), key.size(), digest, &len, EVP_sha256(), nullptr);
  char hex[13];
  for (int i = 0; i < 6; ++i) std::snprintf(hex + 2 * i, 3, "%02x", digest[i]);
  return hex;
}

std::string this_boot() {
  std::string boot;
  for (const char c : read_stripped("/proc/sys/kernel/random/boot_id"))
    if (c != '-') boot += c;
  return std::regex_match(boot, std::regex("[0-9a-f]{32}")) ? boot : "x";
}

bool provably_gone(const std::smatch &m, const std::string &host, const std::string &boot) {
  if (m[1] != host || (m[2] == "x") != (boot == "x")) return false;  // another host's pids, or unjudgeable
  if (m[2] != boot) return true;                                       // an earlier boot: all its processes ended
  const long long pid = std::stoll(m[3]);
  if (pid > INT_MAX) return true;  // no such pid
  if (kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) return true;
  const long long start = std::stoll(m[4].str().substr(0, 18)), started = process_start(pid);
  return start != 0 && started >= 0 && started != start;  // the pid reused by a later process
}

}  // namespace

std::string owner_tag() {
  const long long start = process_start(getpid());
  return "arvc-" + this_host() + "-" + this_boot() + "-" + std::to_string(getpid()) + "-" + std::to_string(start < 0 ? 0 : start);
}

std::string temp_name(const std::string &target_name, const std::string &kind) {
  static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
  std::random_device rd;
  std::string random;
  for (int i = 0; i < 8; ++i) random += alphabet[rd() % 36];
  return "." + target_name.substr(0, 100) + "." + owner_tag() + "-" + random + kind;
}

void clean_stale(const std::string &dir, const std::string &kind) {
  std::string escaped;
  for (const char c : kind) escaped += std::string(std::isalnum(static_cast<unsigned char>(c)) ? "" : "\\") + c;
  const std::regex name("\\.[\\s\\S]*\\.arvc-([0-9a-f]{12})-([0-9a-f]{32}|x)-([1-9][0-9]{0,9})-([0-9]{1,20})-[a-z0-9]{8}" + escaped);
  const std::string host = this_host(), boot = this_boot();
  DIR *d = opendir(dir.empty() ? "." : dir.c_str());
  if (!d) return;
  while (const dirent *e = readdir(d)) {
    const std::string entry = e->d_name;
    std::smatch m;
    if (std::regex_match(entry, m, name) && provably_gone(m, host, boot))
      unlink((dir.empty() ? entry : dir + "/" + entry).c_str());  // gone already: another run cleaned it
  }
  closedir(d);
}

}  // namespace arvc_tool
