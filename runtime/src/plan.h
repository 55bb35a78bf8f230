// Reading a plan directory (the format is specified in runtime/plan.py and docs/plan-format.md): the
// manifest's checks in Python's order, then the fields the C runtime needs, parsed once.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace arvc {

constexpr int kSchemaVersion = 1;

struct CacheGeometry {  // runtime/kv_cache.py CacheGeometry
  int frames_per_block = 3, window = 0, sink = 0, max_frames = 21;
  bool relative_rope = false;
  int ring() const { return window ? window - sink : max_frames; }
  int capacity_frames() const { return window ? window : max_frames; }
};

struct Plan {
  std::string dir, precision;
  CacheGeometry geometry;
  std::vector<double> timesteps;
  int width = 0, height = 0, fps = 0, latent_h = 0, latent_w = 0, tokens_per_frame = 0;
  int in_channels = 0, text_dim = 0, text_len = 0, rope_max_positions = 1024, temporal_factor = 1;
  std::array<int, 3> patch{};           // (t, h, w)
  std::array<int, 3> rope_axis_dims{};  // head_dim split (time, height, width), as WanConfig
  std::unordered_map<std::string, int64_t> vocab;  // empty: the plan takes prompt embeddings
  int text_max_len = 0;
  std::string text_graph, dit_graph, vae_first_graph, vae_graph, text_encoder_graph;  // paths

  std::string path(const std::string &name) const { return dir + "/" + name; }
};

// Throws arvc::Error (ARVC_ERR_PLAN / ARVC_ERR_INTEGRITY) naming the file and the fix.
Plan read_plan(const std::string &dir, bool verify_files);

std::string sha256_file_hex(const std::string &path);

}  // namespace arvc
