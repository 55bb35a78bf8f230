#include "plan.h"

#include <openssl/evp.h>

#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <sys/stat.h>

#include "error.h"

namespace arvc {
namespace {

using json = nlohmann::json;

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

// runtime/plan.py canonical_json: sorted keys, 2-space indent, ASCII escapes, trailing newline.
// nlohmann's object is a sorted map and formats numbers as Python's repr does (tested on every plan).
std::string canonical(const json &j) { return j.dump(2, ' ', true) + "\n"; }

const json &need(const json &obj, const char *key, const std::string &where) {
  auto it = obj.find(key);
  if (it == obj.end()) fail(ARVC_ERR_PLAN, where + ": the manifest has no '" + key + "'; recompile the plan with this arvc");
  return *it;
}

// runtime/manifest.py is_plain_name: a file of the plan's own folder (no separator, no '..', not absolute, not
// hidden, no NUL), so a plan is closed: nothing outside it is read.
bool is_plain_name(const std::string &name) {
  if (name.empty() || name.size() > 255 || name[0] == '.') return false;
  for (const char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
                    c == '-';
    if (!ok) return false;
  }
  return true;
}

// runtime/manifest.py Manifest: the resolution is what the model's patch size and the geometry make it.
void check_resolution(const Plan &plan, const std::string &mpath) {
  const int tpf = (plan.latent_h / plan.patch[1]) * (plan.latent_w / plan.patch[2]);
  const std::pair<const char *, std::pair<int, int>> fields[] = {
      {"tokens_per_frame", {plan.tokens_per_frame, tpf}},
      {"tokens_per_block", {plan.tokens_per_block, tpf * plan.geometry.frames_per_block}},
      {"cache_tokens", {plan.cache_tokens, tpf * plan.geometry.capacity_frames()}}};
  for (const auto &[name, have_want] : fields)
    if (have_want.first != have_want.second)
      fail(ARVC_ERR_PLAN, mpath + ": resolution." + name + " is " + std::to_string(have_want.first) +
                              ", but the model's patch size and the geometry make it " + std::to_string(have_want.second) +
                              "; recompile the plan with this arvc (arvc compile)");
}

}  // namespace

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

std::string sha256_file_hex(const std::string &path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(ARVC_ERR_INTEGRITY, path + ": integrity check failed: cannot read the file; recompile the plan");
  Sha256 h;
  std::vector<char> buf(1 << 22);
  while (f) {
    f.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    h.update(buf.data(), static_cast<size_t>(f.gcount()));
  }
  return h.hex_digest();
}

Plan read_plan(const std::string &dir, bool verify_files) {
  const std::string mpath = dir + "/manifest.json";
  std::ifstream f(mpath, std::ios::binary);
  if (!f) fail(ARVC_ERR_PLAN, dir + " is not an arvc plan (no manifest.json); create one with `arvc compile CHECKPOINT -o " + dir + "`");
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string raw = ss.str();
  json m;
  try {
    m = json::parse(raw);
  } catch (const json::exception &e) {
    fail(ARVC_ERR_INTEGRITY, mpath + ": integrity check failed: not valid JSON (" + e.what() + "); the plan is corrupted, recompile it with `arvc compile`");
  }
  if (!m.is_object() || m.value("format", json()) != "arvc-plan")
    fail(ARVC_ERR_PLAN, mpath + ": not an arvc plan manifest (format must be 'arvc-plan')");
  auto ver = m.find("schema_version");
  if (ver == m.end() || !ver->is_number_integer())
    fail(ARVC_ERR_INTEGRITY, mpath + ": integrity check failed: schema_version is missing; recompile the plan");
  if (ver->get<int64_t>() > kSchemaVersion)
    fail(ARVC_ERR_PLAN, mpath + ": plan schema version " + std::to_string(ver->get<int64_t>()) + " is newer than this arvc reads (up to " +
                            std::to_string(kSchemaVersion) + "); upgrade arvc, or recompile the plan with this arvc");
  json body = m;
  body.erase("manifest_sha256");
  Sha256 h;
  const std::string body_text = canonical(body);
  h.update(body_text.data(), body_text.size());
  json sealed = body;
  sealed["manifest_sha256"] = h.hex_digest();
  if (raw != canonical(sealed))
    fail(ARVC_ERR_INTEGRITY, mpath + ": integrity check failed: manifest.json was modified after compile (its manifest_sha256 does not match); recompile the plan");

  try {
    const json &files = need(m, "files", mpath);
    for (auto &[name, entry] : files.items())
      if (!is_plain_name(name))
        fail(ARVC_ERR_PLAN, mpath + ": files names " + json(name).dump() + ", which is not a plain file name of the plan's own "
                                    "folder (letters, digits, '.', '_', '-'; no path, no leading '.'); recompile the plan with this arvc");
    if (verify_files) {
      for (auto &[name, entry] : files.items()) {  // sorted, as Python checks them
        const std::string p = dir + "/" + name;
        struct stat st {};
        if (lstat(p.c_str(), &st) == 0 && !S_ISREG(st.st_mode))  // a closed plan: its own regular files
          fail(ARVC_ERR_INTEGRITY, p + ": integrity check failed: not a regular file of the plan (a link, a folder or a device); "
                                       "a plan holds its files itself, recompile it");
        if (stat(p.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
          fail(ARVC_ERR_INTEGRITY, p + ": integrity check failed: file is missing; recompile the plan");
        const auto bytes = entry.at("bytes").get<int64_t>();
        if (st.st_size != bytes)
          fail(ARVC_ERR_INTEGRITY, p + ": integrity check failed: " + std::to_string(st.st_size) + " bytes, the manifest records " +
                                       std::to_string(bytes) + "; the file was truncated or replaced, recompile the plan");
        if (sha256_file_hex(p) != entry.at("sha256").get<std::string>())
          fail(ARVC_ERR_INTEGRITY, p + ": integrity check failed: SHA-256 differs from the manifest; the file was corrupted or edited after compile, recompile the plan");
      }
    }

    Plan plan;
    plan.dir = dir;
    plan.precision = m.value("precision", std::string("?"));
    const json &g = need(m, "geometry", mpath);
    plan.geometry = {g.at("frames_per_block").get<int>(), g.at("window").get<int>(), g.at("sink").get<int>(),
                     g.at("max_frames").get<int>(), g.at("rope").get<std::string>() == "relative"};
    plan.timesteps = need(m, "schedule", mpath).at("timesteps").get<std::vector<double>>();
    const json &res = need(m, "resolution", mpath);
    plan.width = res.at("width");
    plan.height = res.at("height");
    plan.fps = res.at("fps");
    plan.latent_h = res.at("latent_h");
    plan.latent_w = res.at("latent_w");
    plan.tokens_per_frame = res.at("tokens_per_frame");
    plan.tokens_per_block = res.at("tokens_per_block");
    plan.cache_tokens = res.at("cache_tokens");
    const json &model = need(m, "model", mpath);
    const json &dit = model.at("dit");
    plan.in_channels = dit.at("in_channels");
    plan.text_dim = dit.at("text_dim");
    plan.text_len = dit.at("text_len");
    plan.rope_max_positions = dit.value("rope_max_positions", 1024);
    for (int i = 0; i < 3; ++i) plan.patch[i] = dit.at("patch_size").at(i);
    check_resolution(plan, mpath);
    const json &recipe = need(m, "recipe", mpath);
    plan.kv_cache = recipe.value("kv_cache", std::string("fp32"));
    if (recipe.contains("kv_sink") && !recipe.at("kv_sink").is_null()) plan.kv_sink = recipe.at("kv_sink");
    const int head_dim = dit.at("dim").get<int>() / dit.at("num_heads").get<int>();
    const int third = 2 * (head_dim / 6);
    plan.rope_axis_dims = {head_dim - 2 * third, third, third};
    int up = 0;
    for (const auto &u : model.at("vae").at("temporal_upsample")) up += u.get<bool>() ? 1 : 0;
    plan.temporal_factor = 1 << up;
    if (model.contains("text_encoder") && !model.at("text_encoder").is_null()) {
      const json &te = model.at("text_encoder");
      const auto words = te.at("vocab").get<std::vector<std::string>>();
      for (size_t i = 0; i < words.size(); ++i) plan.vocab.emplace(words[i], static_cast<int64_t>(i));
      plan.text_max_len = te.at("max_len");
    }
    const json &stages = need(m, "stages", mpath);
    auto listed = [&](const char *stage, const json &name) {  // a stage reads only files the manifest lists (hashed)
      const std::string n = name.get<std::string>();
      if (!files.contains(n))
        fail(ARVC_ERR_PLAN, mpath + ": stages." + stage + " names " + n + ", which 'files' does not list; recompile the plan with this arvc");
      return plan.path(n);
    };
    plan.text_graph = listed("text", stages.at("text").at("graph"));
    plan.dit_graph = listed("dit", stages.at("dit").at("graph"));
    plan.vae_first_graph = listed("vae", stages.at("vae").at("graphs").at("first"));
    plan.vae_graph = listed("vae", stages.at("vae").at("graphs").at("steady"));
    if (stages.contains("text_encoder")) plan.text_encoder_graph = listed("text_encoder", stages.at("text_encoder").at("graph"));
    return plan;
  } catch (const json::exception &e) {
    fail(ARVC_ERR_PLAN, mpath + ": a field is missing or has the wrong type (" + e.what() + "); recompile the plan with this arvc");
  }
}

}  // namespace arvc
