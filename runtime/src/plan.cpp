#include "plan.h"

#include <dirent.h>
#include <openssl/evp.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <set>

#include "error.h"
#include "json_text.h"
#include "manifest.h"
#include "onnx_graph.h"
#include "regular_file.h"

namespace arvc {
namespace {

std::string hex(const unsigned char *d, unsigned n) {
  static const char *digits = "0123456789abcdef";
  std::string s;
  for (unsigned i = 0; i < n; ++i) {
    s += digits[d[i] >> 4];
    s += digits[d[i] & 15];
  }
  return s;
}

struct Sha256 {
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX *)> ctx{EVP_MD_CTX_new(), EVP_MD_CTX_free};
  Sha256() {
    if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) fail(ARVC_ERR_RUNTIME, "OpenSSL SHA-256 init failed");
  }
  void update(const void *p, size_t n) { EVP_DigestUpdate(ctx.get(), p, n); }
  std::string hex_digest() {
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned n = 0;
    EVP_DigestFinal_ex(ctx.get(), d, &n);
    return hex(d, n);
  }
};

std::string sha256_hex(const std::string &text) {
  Sha256 h;
  h.update(text.data(), text.size());
  return h.hex_digest();
}

[[noreturn]] void tampered(const std::string &path, const std::string &what) {
  fail(ARVC_ERR_INTEGRITY, path + ": integrity check failed: " + what);
}

// format, then schema_version: a newer plan is never half-read (runtime/manifest.py Manifest.check_header)
void check_header(const json &m, const std::string &mpath) {
  const auto format = m.is_object() ? m.find("format") : m.end();
  if (!m.is_object() || format == m.end() || *format != "arvc-plan")
    fail(ARVC_ERR_PLAN, mpath + ": not an arvc plan manifest (format must be 'arvc-plan')");
  const auto ver = m.find("schema_version");
  if (ver == m.end()) tampered(mpath, "schema_version is missing; recompile the plan");
  if (!ver->is_number_integer() || (ver->is_number_unsigned() ? ver->get<uint64_t>() < 1 : ver->get<int64_t>() < 1))
    fail(ARVC_ERR_PLAN, mpath + ": schema_version must be an integer in 1.." + std::to_string(kSchemaVersion) + ", not " + ver->dump(-1, ' ', true).substr(0, 40) +
                            "; recompile the plan with this arvc (arvc compile)");
  if (ver->get<uint64_t>() > static_cast<uint64_t>(kSchemaVersion))
    fail(ARVC_ERR_PLAN, mpath + ": schema_version " + ver->dump() + " is newer than this arvc reads (up to " + std::to_string(kSchemaVersion) +
                            "); upgrade arvc, or recompile the plan with this arvc");
}

// The sealed text embeds the digest recomputed from the content, so any edited byte (content, digest or
// layout) makes the file differ from it (runtime/plan.py seal_manifest).
void check_seal(const json &m, const std::string &raw, const std::string &mpath) {
  json body = m;
  body.erase("manifest_sha256");
  json sealed = body;
  sealed["manifest_sha256"] = sha256_hex(canonical_json(body));
  if (raw != canonical_json(sealed))
    tampered(mpath, "manifest.json was modified after compile (its manifest_sha256 does not match); recompile the plan");
}

// A closed plan: its folder holds manifest.json and the files it lists, each a regular file, nothing else.
void check_closed(const Plan &plan) {
  const std::unique_ptr<DIR, int (*)(DIR *)> d(opendir(plan.dir.c_str()), closedir);
  if (!d) fail(ARVC_ERR_PLAN, plan.dir + ": cannot list the plan's folder (" + std::strerror(errno) + ")");
  std::set<std::string> entries;
  while (const dirent *e = readdir(d.get())) entries.insert(e->d_name);
  for (const auto &[name, entry] : plan.files)
    if (!entries.count(name)) tampered(plan.path(name), "the file is missing (the manifest lists it); recompile the plan");
  for (const auto &name : entries)
    if (name != "." && name != ".." && name != "manifest.json" && !plan.files.count(name))
      tampered(plan.path(name), "the plan's folder holds it, but the manifest does not list it; a plan holds exactly manifest.json and "
                                "the files it lists: remove what was added, or recompile the plan");
  for (const auto &[name, entry] : plan.files) {
    struct stat st {};
    if (lstat(plan.path(name).c_str(), &st) != 0) tampered(plan.path(name), std::string("cannot read it (") + std::strerror(errno) + ")");
    if (!S_ISREG(st.st_mode))
      tampered(plan.path(name), "not a regular file of the plan (a link, a folder, a FIFO or a device); a plan holds its files itself, recompile it");
  }
}

// Each listed file's size, then its SHA-256, read through a descriptor that is no link and no FIFO.
void verify_files(const Plan &plan) {
  for (const auto &[name, entry] : plan.files) {  // sorted, as Python checks them
    const std::string p = plan.path(name);
    const RegularFile f(p);
    if (!f) tampered(p, std::string("cannot open it as a regular file (") + std::strerror(errno) + "); recompile the plan");
    if (f.st.st_size != entry.bytes)
      tampered(p, std::to_string(f.st.st_size) + " bytes, the manifest records " + std::to_string(entry.bytes) +
                      "; the file was truncated or replaced, recompile the plan");
    Sha256 h;
    std::vector<char> buf(1 << 22);
    for (;;) {
      const ssize_t n = read(f.fd, buf.data(), buf.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) tampered(p, std::string("cannot read it (") + std::strerror(errno) + ")");
      if (n == 0) break;
      h.update(buf.data(), static_cast<size_t>(n));
    }
    if (h.hex_digest() != entry.sha256)
      tampered(p, "SHA-256 differs from the manifest; the file was corrupted or edited after compile, recompile the plan");
  }
}

// A graph reads its weights only from files the plan lists (ONNX Runtime would read any file of the folder the
// graph names, and refuses only paths that leave it), and declares the inputs and outputs the manifest makes
// (ONNX Runtime sizes tensors by the declared shapes as it loads, and aborts on some).
void check_graphs(const Plan &plan) {
  const std::pair<const std::string *, Stage> graphs[] = {{&plan.text_graph, Stage::text}, {&plan.dit_graph, Stage::dit},
      {&plan.vae_first_graph, Stage::vae_first}, {&plan.vae_graph, Stage::vae}, {&plan.text_encoder_graph, Stage::text_encoder}};
  for (const auto &[graph, stage] : graphs) {
    if (graph->empty()) continue;
    const GraphFile file = read_graph_file(read_regular_file(*graph, SIZE_MAX), *graph);
    for (const auto &location : file.weight_locations)
      if (!is_plain_name(location) || !plan.files.count(location))
        tampered(*graph, "a weight is read from " + json(location).dump(-1, ' ', true, json::error_handler_t::replace).substr(0, 300) +
                             ", which is not a file the plan lists; a plan's graphs read only the plan's own files, recompile it");
    const GraphSpec want = expected_graph(plan, stage);
    check_declared(file.inputs, want.inputs, *graph, "input");
    check_declared(file.outputs, want.outputs, *graph, "output");
  }
}

}  // namespace

int VaeDecoder::temporal_factor() const {
  int up = 0;
  for (const bool u : temporal_upsample) up += u;
  return 1 << up;
}

std::vector<KVRegion> Plan::kv_regions() const {
  const int sink = sink_rows();
  if (kv_sink.empty() || sink == 0) return {{"", kv_cache, cache_tokens}};
  return {{"sink_", kv_sink, sink + 1}, {"", kv_cache, cache_tokens - sink + 1}};
}

std::string describe_plan(const Plan &plan) {
  const auto &g = plan.geometry;
  json d = json::object();
  d["precision"] = plan.precision;
  d["geometry"] = {{"frames_per_block", g.frames_per_block}, {"window", g.window}, {"sink", g.sink},
                   {"max_frames", g.max_frames}, {"rope", g.relative_rope ? "relative" : "absolute"}};
  d["timesteps"] = plan.timesteps;
  d["resolution"] = {{"height", plan.height}, {"width", plan.width}, {"fps", plan.fps}, {"latent_h", plan.latent_h},
                     {"latent_w", plan.latent_w}, {"tokens_per_frame", plan.tokens_per_frame},
                     {"tokens_per_block", plan.tokens_per_block}, {"cache_tokens", plan.cache_tokens}};
  d["model"] = {{"in_channels", plan.in_channels}, {"text_dim", plan.text_dim}, {"text_len", plan.text_len},
                {"rope_max_positions", plan.rope_max_positions}, {"patch_size", plan.patch},
                {"rope_axis_dims", plan.rope_axis_dims}, {"temporal_factor", plan.temporal_factor}};
  d["text_encoder"] = nullptr;
  if (!plan.vocab.empty()) {
    std::vector<std::string> words(plan.vocab.size());
    for (const auto &[word, id] : plan.vocab) words.at(static_cast<size_t>(id)) = word;
    d["text_encoder"] = {{"vocab", words}, {"max_len", plan.text_max_len}};
  }
  d["graphs"] = {{"text", plan.text_graph}, {"dit", plan.dit_graph}, {"vae_first", plan.vae_first_graph},
                 {"vae", plan.vae_graph}};
  d["graphs"]["text_encoder"] = plan.text_encoder_graph.empty() ? json(nullptr) : json(plan.text_encoder_graph);
  d["kv_cache"] = plan.kv_cache;
  d["kv_sink"] = plan.kv_sink.empty() ? json(nullptr) : json(plan.kv_sink);
  d["sink_rows"] = plan.sink_rows();
  d["kv_regions"] = json::array();
  for (const auto &r : plan.kv_regions())
    d["kv_regions"].push_back({{"prefix", r.prefix}, {"format", r.format}, {"rows", r.rows}});
  return d.dump();
}

Plan read_plan(const std::string &dir, bool verify) {
  const std::string mpath = dir + "/manifest.json";
  struct stat st {};
  if (lstat(mpath.c_str(), &st) != 0)
    fail(ARVC_ERR_PLAN, dir + " is not an arvc plan (no manifest.json); create one with `arvc compile CHECKPOINT -o " + dir + "`");
  const std::string raw = read_regular_file(mpath, kMaxManifestBytes);
  const json m = parse_manifest_json(raw, mpath);
  check_header(m, mpath);
  check_seal(m, raw, mpath);
  Plan plan;
  plan.dir = dir;
  read_manifest_fields(m, mpath, plan);
  check_closed(plan);
  if (verify) verify_files(plan);
  check_graphs(plan);
  return plan;
}

}  // namespace arvc
