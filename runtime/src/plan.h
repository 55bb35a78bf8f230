// Reading a plan directory (the format is specified in runtime/plan.py and docs/plan-format.md): the
// manifest's checks in Python's order, then the fields the C runtime needs, parsed once, with the facts
// runtime/manifest.py Manifest derives from them (tests/test_c_runtime.py compares the two: describe_plan).
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

namespace arvc {

constexpr int kSchemaVersion = 2;  // runtime/manifest.py SCHEMA_VERSION (2 dropped the stored TensorRT graphs, read alike)

struct CacheGeometry {  // arvc/model/cache_geometry.py CacheGeometry
  int frames_per_block = 3, window = 0, sink = 0, max_frames = 21;
  bool relative_rope = false;
  int ring() const { return window ? window - sink : max_frames; }
  int capacity_frames() const { return window ? window : max_frames; }
};

struct KVRegion {  // quant/kv.py KVRegion: one set of buffers of a layer's K (or V) cache
  std::string prefix, format;
  int rows = 0;
};

struct VaeDecoder {  // arvc/model/config.py WanVAEConfig: what the VAE graphs' shapes follow from
  int z_dim = 16, base_dim = 96, num_res_blocks = 2;
  std::vector<int> dim_mult;
  std::vector<bool> temporal_upsample;
  int spatial_factor() const { return 1 << (dim_mult.size() - 1); }
  int temporal_factor() const;
  // arvc/model/vae.py Decoder3d.state_specs: (channels, spatial scale) of each stateful conv, in order
  std::vector<std::pair<int, int>> state_specs() const;
};

struct FileEntry {  // runtime/manifest.py FileEntry
  int64_t bytes = 0;
  std::string sha256;
};

struct Plan {
  std::string dir, precision;
  CacheGeometry geometry;
  std::vector<double> timesteps;
  int width = 0, height = 0, fps = 0, latent_h = 0, latent_w = 0;
  int tokens_per_frame = 0, tokens_per_block = 0, cache_tokens = 0;  // resolution, checked against the geometry
  std::string kv_cache = "fp32", kv_sink;  // the recipe's KV formats; kv_sink empty: the sink uses kv_cache
  int dim = 0, num_heads = 0, num_layers = 0;
  int in_channels = 0, text_dim = 0, text_len = 0, rope_max_positions = 1024, temporal_factor = 1;
  std::array<int, 3> patch{};           // (t, h, w)
  std::array<int, 3> rope_axis_dims{};  // head_dim split (time, height, width), as WanConfig
  VaeDecoder vae;
  std::unordered_map<std::string, int64_t> vocab;  // empty: the plan takes prompt embeddings
  int text_max_len = 0;
  std::string text_graph, dit_graph, vae_first_graph, vae_graph, text_encoder_graph;  // paths
  std::map<std::string, FileEntry> files;  // every file of the plan but manifest.json

  std::string path(const std::string &name) const { return dir + "/" + name; }
  int head_dim() const { return dim / num_heads; }
  int sink_rows() const { return geometry.sink * tokens_per_frame; }
  std::vector<KVRegion> kv_regions() const;  // as Manifest.kv_regions()
};

// docs/plan-validation.md's checks in its order, before anything is sized by the plan: the manifest's text, its
// seal, its fields and their relations, the closed folder, then (verify) every file's size and SHA-256.
// Throws arvc::Error (ARVC_ERR_PLAN / ARVC_ERR_INTEGRITY) naming the file and the fix.
Plan read_plan(const std::string &dir, bool verify_files);

// The plan as this reader sees it, as JSON (the fields of runtime/manifest.py's Manifest it reads, and the
// facts it derives): what arvc_plan_describe returns.
std::string describe_plan(const Plan &plan);

}  // namespace arvc
