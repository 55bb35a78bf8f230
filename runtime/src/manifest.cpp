#include "manifest.h"

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <optional>
#include <set>
#include <tuple>

#include "error.h"

namespace arvc {
namespace {

using Int = __int128;  // every JSON integer the text may hold (-2^63..2^64-1) and every bound, exactly
constexpr Int kAnyInt = Int{1} << 64;  // no bound (the text's 64-bit rule bounds it)

// quant/format_table.py's lists, and the recipe's modes (quant/activations.py)
const std::set<std::string> kWeightFormats = {"fp32", "fp16", "bf16", "int8", "fp8", "nvfp4"};
const std::set<std::string> kQuantizedFormats = {"int8", "fp8", "nvfp4"};
const std::set<std::string> kKvFormats = {"fp32", "fp16", "int8", "fp8", "nvfp4"};
const std::set<std::string> kComputeFormats = {"fp32", "fp16", "bf16"};
const std::set<std::string> kActModes = {"static", "dynamic"};
const std::set<std::string> kActScales = {"per-layer", "per-timestep"};
const std::set<std::string> kRopeModes = {"absolute", "relative"};
const std::set<std::string> kTargets = {"cpu", "cuda", "tensorrt"};
const std::set<std::string> kBackends = {"ort", "torch", "tensorrt"};  // runtime/manifest.py BACKENDS
constexpr int kRecipeVersion = 1;  // quant/recipe.py RECIPE_VERSION

std::string shown(const json &v) {
  const std::string s = v.dump(-1, ' ', true);
  return s.size() <= 40 ? s : s.substr(0, 37) + "...";
}

std::string str(Int v) {
  if (v < 0) return "-" + str(-v);
  std::string s;
  do s.insert(s.begin(), static_cast<char>('0' + static_cast<int>(v % 10)));
  while ((v /= 10) > 0);
  return s;
}

const char *const kRecompile = "recompile the plan with this arvc (arvc compile)";

[[noreturn]] void refuse(const std::string &what) { fail(ARVC_ERR_PLAN, what + "; " + kRecompile); }

// -- one value of a field's type (runtime/manifest.py _read) ----------------------------------------------------
Int integer(const json &v, const std::string &where, Int lo, Int hi) {
  if (!v.is_number_integer()) refuse(where + " must be an integer, not " + shown(v));
  const Int x = v.is_number_unsigned() ? Int{v.get<uint64_t>()} : Int{v.get<int64_t>()};
  if (x < lo || x > hi)
    refuse(where + " is " + str(x) + (lo == -kAnyInt ? ", more than " + str(hi) : hi == kAnyInt ? ", less than " + str(lo) : ", not in " + str(lo) + ".." + str(hi)));
  return x;
}

double number(const json &v, const std::string &where) {
  if (!v.is_number()) refuse(where + " must be a number, not " + shown(v));
  return v.get<double>();
}

const std::string &string(const json &v, const std::string &where) {
  if (!v.is_string()) refuse(where + " must be a string, not " + shown(v));
  return v.get_ref<const std::string &>();
}

std::string one_of(const json &v, const std::string &where, const std::set<std::string> &choices) {
  const std::string &s = string(v, where);
  if (!choices.count(s)) {
    std::string all;
    for (const auto &c : choices) all += (all.empty() ? "" : ", ") + c;
    refuse(where + " is " + shown(v) + ", not one of " + all);
  }
  return s;
}

bool boolean(const json &v, const std::string &where) {
  if (!v.is_boolean()) refuse(where + " must be true or false, not " + shown(v));
  return v.get<bool>();
}

const json &array(const json &v, const std::string &where) {
  if (!v.is_array()) refuse(where + " must be a list, not " + shown(v));
  return v;
}

const json &object(const json &v, const std::string &where) {
  if (!v.is_object()) refuse(where + " must be a JSON object, not " + shown(v));
  return v;
}

std::string at(const std::string &where, const std::string &key) { return where.empty() ? key : where + "." + key; }
std::string at(const std::string &where, size_t i) { return where + "[" + std::to_string(i) + "]"; }

template <class Each>
void each_string(const json &v, const std::string &where, Each &&each) {  // tuple[str, ...]
  for (size_t i = 0; i < array(v, where).size(); ++i) each(string(v[i], at(where, i)));
}

void string_values(const json &v, const std::string &where) {  // dict[str, str] and the (key, value) pairs
  for (const auto &[k, x] : object(v, where).items()) string(x, where + "[" + json(k).dump(-1, ' ', true) + "]");
}

// -- one section: a dataclass of runtime/manifest.py, as _read_dataclass reads it ---------------------------------
class Section {
 public:
  Section(const json &j, std::string where, std::initializer_list<const char *> keys) : j_(j), where_(std::move(where)) {
    object(j, where_.empty() ? "the manifest" : where_);
    for (const auto &[key, value] : j.items())
      if (std::none_of(keys.begin(), keys.end(), [&](const char *k) { return key == k; }))
        fail(ARVC_ERR_PLAN, at(where_, key) + " is not a field this arvc knows: a newer arvc wrote this plan; upgrade arvc, or recompile the "
                                              "plan with this one");
  }
  std::string where(const char *key) const { return at(where_, key); }
  const json *find(const char *key) const {  // nullptr: absent (its default applies)
    const auto it = j_.find(key);
    return it == j_.end() ? nullptr : &*it;
  }
  const json &need(const char *key) const {
    if (const json *v = find(key)) return *v;
    refuse(where(key) + " is missing");
  }
  const json *optional(const char *key) const {  // X | None: nullptr when absent or null
    const json *v = find(key);
    return v && !v->is_null() ? v : nullptr;
  }
  int integer(const char *key, std::optional<int> fallback, Int lo, Int hi) const {  // a bounded int field
    const json *v = fallback ? find(key) : &need(key);
    return static_cast<int>(v ? arvc::integer(*v, where(key), lo, hi) : *fallback);
  }
  Int count(const char *key, Int lo = 0, Int hi = kAnyInt) const { return arvc::integer(need(key), where(key), lo, hi); }
  Int integer_or(const char *key, Int fallback) const {  // any integer: its range depends on other fields
    const json *v = find(key);
    return v ? arvc::integer(*v, where(key), -kAnyInt, kAnyInt) : fallback;
  }
  double number(const char *key, std::optional<double> fallback = std::nullopt) const {
    const json *v = fallback ? find(key) : &need(key);
    return v ? arvc::number(*v, where(key)) : *fallback;
  }
  std::string string(const char *key, std::optional<std::string> fallback = std::nullopt) const {
    const json *v = fallback ? find(key) : &need(key);
    return v ? arvc::string(*v, where(key)) : *fallback;
  }
  std::string one_of(const char *key, const std::set<std::string> &choices, std::optional<std::string> fallback = std::nullopt) const {
    const json *v = fallback ? find(key) : &need(key);
    return v ? arvc::one_of(*v, where(key), choices) : *fallback;
  }
  bool boolean(const char *key, bool fallback) const {
    const json *v = find(key);
    return v ? arvc::boolean(*v, where(key)) : fallback;
  }

 private:
  const json &j_;
  std::string where_;
};

void positive_finite(double x, const std::string &where) {
  if (!(x > 0) || !std::isfinite(x)) refuse(where + " is " + python_float_repr(x) + ", not a positive number");
}

// -- the sections ------------------------------------------------------------------------------------------------
void read_dit(const json &j, Plan &p) {  // arvc/model/config.py WanConfig
  const Section s(j, "model.dit", {"dim", "ffn_dim", "num_heads", "num_layers", "in_channels", "out_channels", "patch_size",
                                   "text_dim", "text_len", "freq_dim", "eps", "rope_max_positions"});
  p.dim = s.integer("dim", 1536, 1, 65536);
  s.integer("ffn_dim", 8960, 1, 65536);
  p.num_heads = s.integer("num_heads", 12, 1, 1024);
  p.num_layers = s.integer("num_layers", 30, 1, 1024);
  p.in_channels = s.integer("in_channels", 16, 1, 1024);
  const int out_channels = s.integer("out_channels", 16, 1, 1024);
  p.patch = {1, 2, 2};
  if (const json *patch = s.find("patch_size")) {  // [1, ph, pw]: frames are never patched together
    if (array(*patch, s.where("patch_size")).size() != 3) refuse(s.where("patch_size") + " must be a list of 3, not " + shown(*patch));
    for (size_t i = 0; i < 3; ++i) p.patch[i] = static_cast<int>(integer((*patch)[i], at(s.where("patch_size"), i), 1, i ? 16 : 1));
  }
  p.text_dim = s.integer("text_dim", 4096, 1, 65536);
  p.text_len = s.integer("text_len", 512, 1, 4096);
  const int freq_dim = s.integer("freq_dim", 256, 1, 65536);
  const double eps = s.number("eps", 1e-6);
  p.rope_max_positions = s.integer("rope_max_positions", 1024, 1, 65536);
  if (freq_dim % 2) refuse(s.where("freq_dim") + " is " + std::to_string(freq_dim) + ", not even");
  if (!(eps > 0 && eps < 1)) refuse(s.where("eps") + " is " + python_float_repr(eps) + ", outside 0 < eps < 1");
  if (out_channels != p.in_channels)
    refuse("model.dit: out_channels " + std::to_string(out_channels) + " differs from in_channels " + std::to_string(p.in_channels));
  if (p.dim % p.num_heads) refuse("model.dit: dim " + std::to_string(p.dim) + " is not divisible by num_heads " + std::to_string(p.num_heads));
  const int head_dim = p.head_dim();
  if (head_dim % 2 || head_dim < 6) refuse("model.dit: head_dim " + std::to_string(head_dim) + " must be even and >= 6 for 3D RoPE");
  const int third = 2 * (head_dim / 6);
  p.rope_axis_dims = {head_dim - 2 * third, third, third};
}

void read_vae(const json &j, VaeDecoder &vae) {  // WanVAEConfig
  const Section s(j, "model.vae", {"base_dim", "z_dim", "dim_mult", "num_res_blocks", "temporal_upsample", "latent_mean", "latent_std"});
  vae.base_dim = s.integer("base_dim", 96, 1, 4096);
  vae.z_dim = s.integer("z_dim", 16, 1, 1024);
  vae.dim_mult = {1, 2, 4, 4};
  if (const json *m = s.find("dim_mult")) {
    vae.dim_mult.clear();
    for (size_t i = 0; i < array(*m, s.where("dim_mult")).size(); ++i)
      vae.dim_mult.push_back(static_cast<int>(integer((*m)[i], at(s.where("dim_mult"), i), 1, 64)));
    if (vae.dim_mult.empty() || vae.dim_mult.size() > 8) refuse(s.where("dim_mult") + " has " + std::to_string(m->size()) + " entries, not 1..8");
  }
  vae.num_res_blocks = s.integer("num_res_blocks", 2, 1, 16);
  vae.temporal_upsample = {true, true, false};
  if (const json *t = s.find("temporal_upsample")) {
    vae.temporal_upsample.clear();
    for (size_t i = 0; i < array(*t, s.where("temporal_upsample")).size(); ++i)
      vae.temporal_upsample.push_back(boolean((*t)[i], at(s.where("temporal_upsample"), i)));
  }
  if (vae.temporal_upsample.size() != vae.dim_mult.size() - 1)
    refuse("model.vae: temporal_upsample has " + std::to_string(vae.temporal_upsample.size()) + " entries; dim_mult needs " +
           std::to_string(vae.dim_mult.size() - 1) + " (one per upsampling)");
  const size_t wan_stats = 16;  // absent: Wan2.1's 16 channels' statistics (WanVAEConfig's defaults, all std > 0)
  for (const char *key : {"latent_mean", "latent_std"}) {
    const json *v = s.find(key);
    const size_t n = v ? array(*v, s.where(key)).size() : wan_stats;
    for (size_t i = 0; v && i < n; ++i) {
      const double x = number((*v)[i], at(s.where(key), i));
      if (std::string(key) == "latent_std") positive_finite(x, at(s.where(key), i));
    }
    if (n != static_cast<size_t>(vae.z_dim))
      refuse("model.vae: " + std::string(key) + " has " + std::to_string(n) + " values but z_dim is " + std::to_string(vae.z_dim));
  }
}

bool has_whitespace_or_nul(const std::string &word) { return word.find_first_of(std::string(" \t\n\v\f\r\0", 7)) != std::string::npos; }

void read_text_encoder(const json &j, Plan &p) {  // TextEncoderSpec
  const Section s(j, "model.text_encoder", {"vocab", "max_len", "dim"});
  const json &vocab = array(s.need("vocab"), s.where("vocab"));
  if (vocab.empty() || vocab.size() > 1000000) refuse(s.where("vocab") + " has " + std::to_string(vocab.size()) + " words, not 1..1000000");
  for (size_t i = 0; i < vocab.size(); ++i) {
    const std::string &w = string(vocab[i], at(s.where("vocab"), i));
    if (w.empty() || has_whitespace_or_nul(w)) refuse(at(s.where("vocab"), i) + " is " + shown(vocab[i]) + ": a word is not empty and holds no whitespace or NUL");
    if (!p.vocab.emplace(w, static_cast<int64_t>(i)).second) refuse(at(s.where("vocab"), i) + " repeats the word " + shown(vocab[i]));
  }
  p.text_max_len = s.integer("max_len", std::nullopt, 1, 4096);
  const int dim = s.integer("dim", std::nullopt, 1, 65536);
  if (p.text_max_len != p.text_len)
    refuse(s.where("max_len") + " is " + std::to_string(p.text_max_len) + ", but model.dit.text_len is " + std::to_string(p.text_len));
  if (dim != p.text_dim) refuse(s.where("dim") + " is " + std::to_string(dim) + ", but model.dit.text_dim is " + std::to_string(p.text_dim));
}

void read_geometry(const json &j, CacheGeometry &g) {  // arvc/model/cache_geometry.py CacheGeometry
  const Section s(j, "geometry", {"frames_per_block", "window", "sink", "max_frames", "rope"});
  g.frames_per_block = s.integer("frames_per_block", 3, 1, 64);
  g.max_frames = s.integer("max_frames", 21, g.frames_per_block, 4096);
  g.relative_rope = s.one_of("rope", kRopeModes, std::string("absolute")) == "relative";
  const bool global = s.integer_or("window", 0) == 0;
  g.window = global ? 0 : s.integer("window", 0, g.frames_per_block, 4096);
  if (global && s.integer_or("sink", 0) != 0)
    refuse(s.where("sink") + " " + str(s.integer_or("sink", 0)) + " needs a rolling window (--window > 0); global attention (window 0) keeps every frame");
  g.sink = global ? 0 : s.integer("sink", 0, 0, g.window - g.frames_per_block);  // a block must fit in the ring
}

void read_schedule(const json &j, std::vector<double> &timesteps) {  // arvc/model/schedule.py Schedule
  const Section s(j, "schedule", {"timesteps"});
  const json &ts = array(s.need("timesteps"), s.where("timesteps"));
  if (ts.empty() || ts.size() > 64) refuse(s.where("timesteps") + " has " + std::to_string(ts.size()) + " entries, not 1..64");
  for (size_t i = 0; i < ts.size(); ++i) {
    const double t = number(ts[i], at(s.where("timesteps"), i));
    if (!(t > 0 && t <= 1000)) refuse(at(s.where("timesteps"), i) + " is " + shown(ts[i]) + ", outside (0, 1000]");
    if (i && !(t < timesteps.back())) refuse(s.where("timesteps") + " must strictly decrease; entry " + std::to_string(i) + " does not");
    timesteps.push_back(t);
  }
}

void read_resolution(const json &j, Plan &p) {  // runtime/manifest.py Resolution
  const Section s(j, "resolution", {"height", "width", "fps", "latent_h", "latent_w", "tokens_per_frame", "tokens_per_block", "cache_tokens"});
  p.height = static_cast<int>(s.count("height", 1, 8192));
  p.width = static_cast<int>(s.count("width", 1, 8192));
  p.fps = static_cast<int>(s.count("fps", 1, 240));
  p.latent_h = static_cast<int>(s.count("latent_h", 1, 1024));
  p.latent_w = static_cast<int>(s.count("latent_w", 1, 1024));
  p.tokens_per_frame = static_cast<int>(s.count("tokens_per_frame", 1, 1 << 20));
  p.tokens_per_block = static_cast<int>(s.count("tokens_per_block", 1, 1 << 26));
  p.cache_tokens = static_cast<int>(s.count("cache_tokens", 1, 1 << 24));
}

void read_recipe(const json &j, Plan &p) {  // runtime/manifest.py PlanRecipe (quant/recipe.py Recipe)
  const Section s(j, "recipe", {"name", "weights", "compute", "activations", "act_scales", "kv_cache", "kv_sink", "skip", "keep",
                                "layer_formats", "version", "quantized_weights", "kept_layers", "quantized_activations",
                                "calibration", "sensitivity"});
  s.string("name");
  const std::string weights = s.one_of("weights", kWeightFormats);
  s.one_of("compute", kComputeFormats, std::string("fp32"));
  if (const json *a = s.optional("activations")) {
    one_of(*a, s.where("activations"), kActModes);
    if (!kQuantizedFormats.count(weights))
      refuse("recipe: activation quantization pairs with quantized weights (int8, fp8, nvfp4), not " + weights);
  }
  s.one_of("act_scales", kActScales, std::string("per-layer"));
  p.kv_cache = s.one_of("kv_cache", kKvFormats, std::string("fp32"));
  // Recipe reads an empty kv_sink as none (its `kv_sink or kv_cache`), as Plan::kv_sink does
  if (const json *k = s.optional("kv_sink"); k && *k != "") p.kv_sink = one_of(*k, s.where("kv_sink"), kKvFormats);
  for (const char *key : {"skip", "quantized_weights", "quantized_activations"})
    if (const json *v = s.find(key)) each_string(*v, s.where(key), [](const std::string &) {});
  for (const char *key : {"keep", "kept_layers"})
    if (const json *v = s.find(key)) string_values(*v, s.where(key));
  if (const json *v = s.find("layer_formats"))
    for (const auto &[k, f] : object(*v, s.where("layer_formats")).items())
      one_of(f, s.where("layer_formats") + "[" + json(k).dump(-1, ' ', true) + "]", kQuantizedFormats);
  if (const json *v = s.find("version")) integer(*v, s.where("version"), -kAnyInt, kRecipeVersion);
  for (const char *key : {"calibration", "sensitivity"})
    if (const json *v = s.optional(key)) object(*v, s.where(key));
}

struct StageFiles {
  const char *name;
  std::vector<std::string> graphs;  // one graph, or the VAE's first and steady
  std::string weights;
};

StageFiles read_stage(const json &j, const char *name) {  // runtime/manifest.py Stage
  const std::string where = std::string("stages.") + name;
  const Section s(j, where, {"graph", "graphs", "weights", "weights_dtype", "compute"});
  StageFiles f{name, {}, s.string("weights")};
  s.one_of("weights_dtype", kWeightFormats);
  s.one_of("compute", kComputeFormats);
  const json *graph = s.optional("graph"), *graphs = s.optional("graphs");
  if (!graph == !graphs) refuse(where + ": a stage has either 'graph' or 'graphs' (the VAE's first / steady)");
  if (graph) f.graphs = {string(*graph, s.where("graph"))};
  if (graphs) {
    const Section g(*graphs, s.where("graphs"), {"first", "steady"});
    f.graphs = {g.string("first"), g.string("steady")};
  }
  const bool vae = std::string(name) == "vae";
  if (vae != (graphs != nullptr))
    refuse(where + (vae ? " names 'graph'; the VAE stage has 'graphs' (first / steady)" : " names 'graphs'; only the VAE stage has two graphs"));
  return f;
}

void read_memory(const json &j) {  // runtime/manifest.py Memory: figures, none negative
  const Section s(j, "memory", {"kv_cache_bytes", "kv_bytes_per_cached_token", "kv_bytes_per_sink_token", "kv_bytes_vs_fp16",
                                "dit_activation_bytes_estimate", "weights_bytes", "quantized_linear_bytes_per_parameter",
                                "vae_state_bytes", "dit_weight_bytes_per_parameter"});
  for (const char *key : {"kv_cache_bytes", "kv_bytes_per_cached_token", "kv_bytes_per_sink_token", "dit_activation_bytes_estimate", "vae_state_bytes"})
    s.count(key);
  for (const char *key : {"kv_bytes_vs_fp16", "dit_weight_bytes_per_parameter", "quantized_linear_bytes_per_parameter"}) {
    const json &v = s.need(key);  // null only for quantized_linear_bytes_per_parameter: the plan has no quantized linears
    if (v.is_null() && std::string(key) == "quantized_linear_bytes_per_parameter") continue;
    if (!(number(v, s.where(key)) >= 0)) refuse(s.where(key) + " is " + shown(v) + ", negative");
  }
  for (const auto &[k, v] : object(s.need("weights_bytes"), s.where("weights_bytes")).items())
    integer(v, s.where("weights_bytes") + "[" + json(k).dump(-1, ' ', true) + "]", 0, kAnyInt);
}

void read_target(const json &j) {  // runtime/manifest.py Target
  const Section s(j, "target", {"name", "backend", "providers", "opset"});
  s.one_of("name", kTargets);
  s.one_of("backend", kBackends);
  each_string(s.need("providers"), s.where("providers"), [](const std::string &) {});
  s.count("opset", -kAnyInt);
}

bool is_lower_hex(const std::string &s, size_t n) {
  return s.size() == n && std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

void read_files(const json &j, Plan &p) {  // runtime/manifest.py FileEntry per plain name
  for (const auto &[name, entry] : object(j, "files").items()) {
    const std::string where = "files[" + json(name).dump(-1, ' ', true) + "]";
    const Section s(entry, where, {"sha256", "bytes"});
    const std::string sha = s.string("sha256");
    if (!is_lower_hex(sha, 64)) refuse(s.where("sha256") + " is " + shown(s.need("sha256")) + ", not 64 lowercase hex digits");
    p.files[name] = {static_cast<int64_t>(s.count("bytes", 0, Int{1} << 53)), sha};
  }
}

// -- the relations (runtime/manifest.py Manifest.__post_init__) ---------------------------------------------------
void check_resolution(const Plan &p) {
  for (const auto &[side, latent, patch] : {std::tuple{"latent_h", p.latent_h, p.patch[1]}, std::tuple{"latent_w", p.latent_w, p.patch[2]}})
    if (latent % patch)
      refuse(std::string("resolution.") + side + " " + std::to_string(latent) + " is not divisible by the patch size " + std::to_string(patch));
  const int factor = p.vae.spatial_factor();
  for (const auto &[side, have, latent] : {std::tuple{"height", p.height, p.latent_h}, std::tuple{"width", p.width, p.latent_w}})
    if (have != int64_t{latent} * factor)
      refuse(std::string("resolution.") + side + " is " + std::to_string(have) + ", but the latent size " + std::to_string(latent) +
             " and the VAE's upsampling (" + std::to_string(factor) + "x) make it " + std::to_string(int64_t{latent} * factor));
  const int64_t tpf = int64_t{p.latent_h / p.patch[1]} * (p.latent_w / p.patch[2]);
  const std::tuple<const char *, int64_t, int64_t> tokens[] = {{"tokens_per_frame", p.tokens_per_frame, tpf},
                                                               {"tokens_per_block", p.tokens_per_block, tpf * p.geometry.frames_per_block},
                                                               {"cache_tokens", p.cache_tokens, tpf * p.geometry.capacity_frames()}};
  for (const auto &[name, have, want] : tokens)
    if (have != want)
      refuse(std::string("resolution.") + name + " is " + std::to_string(have) + ", but the model's patch size and the geometry make it " +
             std::to_string(want));
}

void check_stage_files(const Plan &p, const std::vector<StageFiles> &stages) {
  for (const auto &[name, entry] : p.files)
    if (!is_plain_name(name) || name == "manifest.json")
      refuse("files names " + json(name).dump(-1, ' ', true).substr(0, 300) + ", which is not a plain file name of the plan's own folder (letters, "
             "digits, '.', '_', '-'; no path, no leading '.'; not manifest.json)");
  for (const auto &stage : stages) {
    std::vector<std::string> used = stage.graphs;
    used.push_back(stage.weights);
    for (const auto &f : used)
      if (!p.files.count(f)) refuse(std::string("stages.") + stage.name + " names " + f + ", which 'files' does not list");
  }
}

}  // namespace

bool is_plain_name(const std::string &name) {
  auto plain = [](char c, bool first) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' || (c == '.' && !first);
  };
  if (name.empty() || name.size() > 255) return false;
  for (size_t i = 0; i < name.size(); ++i)
    if (!plain(name[i], i == 0)) return false;
  return true;
}

void read_manifest_fields(const json &m, const std::string &mpath, Plan &p) {
  try {
    const int version = static_cast<int>(m.at("schema_version").get<int64_t>());
    const Section top(m, "", {"format", "schema_version", "arvc_version", "created", "source", "model", "numerics", "schedule", "geometry",
                              "resolution", "precision", "recipe", "stages", "memory", "target", "versions", "files", "verification",
                              "manifest_sha256"});
    top.string("format");
    top.string("arvc_version");
    top.string("created");
    const Section source(top.need("source"), "source", {"checkpoint", "sha256"});
    source.string("checkpoint");
    source.string("sha256");

    const Section model(top.need("model"), "model", {"dit", "vae", "text_encoder"});
    read_dit(model.need("dit"), p);
    read_vae(model.need("vae"), p.vae);
    p.temporal_factor = p.vae.temporal_factor();
    model.need("text_encoder");
    const json *text_encoder = model.optional("text_encoder");
    if (text_encoder) read_text_encoder(*text_encoder, p);
    if (p.vae.z_dim != p.in_channels)
      refuse("model.vae.z_dim is " + std::to_string(p.vae.z_dim) + ", but model.dit.in_channels is " + std::to_string(p.in_channels));

    const Section numerics(top.need("numerics"), "numerics", {"modulation_bf16"});
    numerics.boolean("modulation_bf16", false);
    read_schedule(top.need("schedule"), p.timesteps);
    read_geometry(top.need("geometry"), p.geometry);
    read_resolution(top.need("resolution"), p);
    p.precision = top.string("precision");
    read_recipe(top.need("recipe"), p);

    // a version 1 plan's stored TensorRT stages are left unread (runtime/manifest.py _from_schema_1)
    const Section stages(top.need("stages"), "stages", version == 1 ? std::initializer_list<const char *>{"text", "dit", "vae", "text_encoder", "dit_trt", "text_trt"}
                                                                     : std::initializer_list<const char *>{"text", "dit", "vae", "text_encoder"});
    std::vector<StageFiles> used = {read_stage(stages.need("text"), "text"), read_stage(stages.need("dit"), "dit"),
                                    read_stage(stages.need("vae"), "vae")};
    if (const json *te = stages.optional("text_encoder")) used.push_back(read_stage(*te, "text_encoder"));
    if ((used.size() == 4) != (text_encoder != nullptr))
      refuse(text_encoder ? "model.text_encoder needs stages.text_encoder, its graph" : "stages.text_encoder needs model.text_encoder, its vocabulary");

    read_memory(top.need("memory"));
    read_target(top.need("target"));
    string_values(top.need("versions"), "versions");
    read_files(top.need("files"), p);
    top.need("verification");  // null while compiling
    if (const json *v = top.optional("verification")) object(*v, "verification");
    if (const json *v = top.optional("manifest_sha256")) string(*v, "manifest_sha256");

    check_resolution(p);
    for (const auto &region : p.kv_regions())  // a format's rows must suit the heads (quant/kv.py kv_parts)
      if (region.format == "nvfp4" && p.head_dim() % 16)
        fail(ARVC_ERR_PLAN, "recipe.kv_cache: an nvfp4 KV cache needs head_dim a multiple of 16 (its 16-value blocks), not " +
                                std::to_string(p.head_dim()) + "; recompile the plan with --kv-cache fp8 or int8 for this model");
    check_stage_files(p, used);
    p.text_graph = p.path(used[0].graphs[0]);
    p.dit_graph = p.path(used[1].graphs[0]);
    p.vae_first_graph = p.path(used[2].graphs[0]);
    p.vae_graph = p.path(used[2].graphs[1]);
    if (used.size() == 4) p.text_encoder_graph = p.path(used[3].graphs[0]);
  } catch (const Error &e) {
    fail(e.status, mpath + ": " + e.what());
  }
}

}  // namespace arvc
