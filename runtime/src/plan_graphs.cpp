#include "plan_graphs.h"

#include <map>
#include <set>

#include "error.h"

namespace arvc {
namespace {

enum : int { F32 = 1, U8 = 2, I8 = 3, I64 = 7, BOOL = 9, F16 = 10, F64 = 11 };

struct KVPart {
  const char *name;
  int type;
  int64_t width;  // elements per cached row
};

// quant/kv.py kv_parts: the buffers of one cached row (one token, all heads) in a KV format (nvfp4: the manifest's
// reader saw to head_dim % 16 == 0)
std::vector<KVPart> kv_parts(const std::string &format, int64_t dim, int64_t heads) {
  if (format == "fp32") return {{"cache", F32, dim}};
  if (format == "fp16") return {{"cache", F16, dim}};
  if (format == "int8") return {{"cache", I8, dim}, {"scale", F32, heads}};
  if (format == "fp8") return {{"cache", U8, dim}, {"scale", F32, heads}};
  return {{"cache", U8, dim / 2}, {"block_scale", U8, dim / 16}, {"scale", F32, heads}};
}

GraphSpec dit(const Plan &p) {  // arvc/graphs/lower_dit.py build_dit_graph
  const int64_t C = p.in_channels, F = p.geometry.frames_per_block, d = p.dim, L = p.text_len;
  const int64_t N = F * p.tokens_per_frame, Nk = p.cache_tokens, half = p.head_dim() / 2;
  const std::vector<int64_t> latents = {1, C, F, p.latent_h, p.latent_w};
  GraphSpec g;
  g.inputs = {{"latents", F32, latents}, {"timestep", F64, {1}}, {"write_index", I64, {N, 1}}, {"key_valid", BOOL, {Nk}},
              {"rope_q_cos", F32, {1, N, half}}, {"rope_q_sin", F32, {1, N, half}}};
  if (p.geometry.relative_rope) g.inputs.insert(g.inputs.end(), {{"rope_k_cos", F32, {1, Nk, half}}, {"rope_k_sin", F32, {1, Nk, half}}});
  g.outputs = {{"x0", F32, latents}};
  const auto regions = p.kv_regions();
  for (int i = 0; i < p.num_layers; ++i)
    for (const char *kind : {"k", "v"}) {
      const std::string layer = "_" + std::to_string(i);
      g.inputs.push_back({std::string("cross_") + kind + layer, F32, {1, L, d}});
      for (const auto &r : regions)
        for (const auto &part : kv_parts(r.format, d, p.num_heads)) {
          const std::string base = std::string(kind) + "_" + r.prefix + part.name;
          g.inputs.push_back({base + layer, part.type, {r.rows, part.width}});
          g.outputs.push_back({base + "_out" + layer, part.type, {r.rows, part.width}});
        }
    }
  return g;
}

GraphSpec vae(const Plan &p, bool first) {  // compiler/lower_traced.py build_vae_graphs (WanVAEDecoder.stream_step)
  const int64_t frames = first ? 1 : p.vae.temporal_factor(), up = p.vae.spatial_factor();
  GraphSpec g;
  g.inputs = {{"latent", F32, {1, p.in_channels, 1, p.latent_h, p.latent_w}}};
  g.outputs = {{"pixels", F32, {1, 3, frames, p.latent_h * up, p.latent_w * up}}};
  const auto specs = p.vae.state_specs();
  for (size_t j = 0; j < specs.size(); ++j) {
    const std::vector<int64_t> shape = {1, specs[j].first, 2, int64_t{p.latent_h} * specs[j].second, int64_t{p.latent_w} * specs[j].second};
    g.inputs.push_back({"state_" + std::to_string(j), F32, shape});
    g.outputs.push_back({"state_out_" + std::to_string(j), F32, shape});
  }
  return g;
}

}  // namespace

std::vector<std::pair<int, int>> VaeDecoder::state_specs() const {
  // arvc/model/vae.py Decoder3d: every causal conv with a temporal kernel of 3 keeps 2 frames of its input
  std::vector<int> dims = {base_dim * dim_mult.back()};
  for (auto m = dim_mult.rbegin(); m != dim_mult.rend(); ++m) dims.push_back(base_dim * *m);
  std::vector<std::pair<int, int>> specs = {{z_dim, 1}};               // conv1
  specs.insert(specs.end(), 4, {dims[0], 1});                          // middle: two residual blocks of two convs
  int scale = 1;
  for (size_t i = 0; i + 1 < dims.size(); ++i) {
    int in = i > 0 ? dims[i] / 2 : dims[i];  // the previous upsampling's conv halved the channels
    for (int r = 0; r <= num_res_blocks; ++r) {
      specs.insert(specs.end(), {{in, scale}, {dims[i + 1], scale}});
      in = dims[i + 1];
    }
    if (i + 1 != dim_mult.size()) {
      if (temporal_upsample[i]) specs.push_back({dims[i + 1], scale});  // its time_conv, before the spatial upsampling
      scale *= 2;
    }
  }
  specs.push_back({dims.back(), scale});  // head
  return specs;
}

GraphSpec expected_graph(const Plan &p, Stage stage) {
  switch (stage) {
    case Stage::text: {  // lower_dit.py build_text_graph: context -> each layer's cross-attention K and V
      GraphSpec g{{{"context", F32, {1, p.text_len, p.text_dim}}}, {}};
      for (int i = 0; i < p.num_layers; ++i)
        for (const char *kind : {"k", "v"}) g.outputs.push_back({std::string("cross_") + kind + "_" + std::to_string(i), F32, {1, p.text_len, p.dim}});
      return g;
    }
    case Stage::dit: return dit(p);
    case Stage::vae_first: return vae(p, true);
    case Stage::vae: return vae(p, false);
    case Stage::text_encoder:  // lower_traced.py build_text_encoder_graph
      return {{{"ids", I64, {1, p.text_max_len}}, {"length", I64, {1}}}, {{"context", F32, {1, p.text_max_len, p.text_dim}}}};
  }
  fail(ARVC_ERR_PLAN, "unknown stage");
}

void check_declared(const std::vector<TensorSpec> &have, const std::vector<TensorSpec> &want, const std::string &graph, const char *kind) {
  const std::string fix = "; the graph does not belong to this manifest (another plan's or stage's, or the manifest was "
                          "edited): recompile the plan";
  const auto failed = [&](const std::string &why) { fail(ARVC_ERR_INTEGRITY, graph + ": integrity check failed: " + why + fix); };
  std::map<std::string, const TensorSpec *> got;  // a name declared twice: the last one, as in a Python dict
  for (const auto &t : have) got[t.name] = &t;
  std::set<std::string> wanted;
  for (const auto &w : want) {
    wanted.insert(w.name);
    if (!got.count(w.name)) failed(std::string("it has no ") + kind + " '" + w.name + "' (" + describe_tensor(w.type, w.shape) + ", what the manifest makes it)");
  }
  for (const auto &[name, t] : got)
    if (!wanted.count(name)) failed(std::string("it has an ") + kind + " '" + name + "' the manifest does not make");
  for (const auto &w : want) {
    const TensorSpec &t = *got.at(w.name);
    if (t.type != w.type || t.shape != w.shape)
      failed(std::string("its ") + kind + " '" + w.name + "' is " + describe_tensor(t.type, t.shape) + ", the manifest makes it " + describe_tensor(w.type, w.shape));
  }
}

std::string describe_tensor(int type, const std::vector<int64_t> &shape) {
  std::string s;
  switch (type) {
    case F32: s = "float32"; break;
    case U8: s = "uint8"; break;
    case I8: s = "int8"; break;
    case I64: s = "int64"; break;
    case BOOL: s = "bool"; break;
    case F16: s = "float16"; break;
    case F64: s = "float64"; break;
    default: s = "type " + std::to_string(type);
  }
  s += " [";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + (shape[i] < 0 ? std::string("?") : std::to_string(shape[i]));
  return s + "]";
}

}  // namespace arvc
