// The plan's stage graphs on ONNX Runtime's C++ API: runtime/ort_backend.py in C++. Every large buffer
// is allocated once and bound once: the KV cache as both input and output of the dit graph (written in
// place), the per-call dit inputs (overwritten before each call, never rebound), the VAE state as two
// sets used in turn. The cache's buffers come from the graph's own inputs (every input X with an output
// X_out), so any KV format the compiler writes is carried without the runtime knowing its layout.
#pragma once

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "plan.h"

namespace arvc {

// Loads ONNX Runtime once per process (arvc.h says from where) and initializes its C++ API.
void load_onnxruntime(const char *library_path);

// A tensor over memory the runtime owns (64-byte aligned), with a static shape from a graph.
struct Buffer {
  std::shared_ptr<uint8_t> data;
  size_t bytes = 0;
  std::vector<int64_t> shape;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  Ort::Value value{nullptr};
  template <class T> T *as() { return reinterpret_cast<T *>(data.get()); }
  size_t elements() const;
};

struct CrossKV {  // one prompt's per-layer cross-attention K/V: the text graph's outputs
  std::vector<std::string> names;
  std::vector<Ort::Value> values;
};

class OrtStages {
 public:
  OrtStages(const Plan &plan, int threads);

  bool has_text_encoder() const { return static_cast<bool>(text_encoder_); }
  // ids [text_max_len], length -> context [text_len_of_encoder * text_dim]
  std::vector<float> encode_text(const std::vector<int64_t> &ids, int64_t length);
  CrossKV cross_kv(const std::vector<float> &context);  // context [1, text_len, text_dim]
  void bind_cross(const CrossKV &kv);

  // The dit call's inputs, written in place before run_dit (shapes fixed by the graph).
  Buffer &dit_input(const std::string &name);
  bool dit_has_input(const std::string &name) const;
  const float *run_dit();  // x0 [1, C, F, h, w]; valid until the next run_dit

  void reset_vae();
  // one latent frame [C, h, w] -> pixels [3, n, H, W] (n = 1 for the first, temporal factor after)
  const float *run_vae(const float *latent, bool first, int *frames_out);

  size_t kv_cache_bytes() const;
  size_t vae_state_bytes() const;
  int dit_frames() const { return dit_frames_; }

 private:
  Ort::SessionOptions options_;
  std::unique_ptr<Ort::Session> text_, dit_, vae_first_, vae_, text_encoder_;
  std::unique_ptr<Ort::IoBinding> dit_binding_;
  std::vector<Buffer> kv_;
  std::vector<std::pair<std::string, Buffer>> dit_inputs_;
  Buffer x0_;
  int dit_frames_ = 0;
  std::vector<Buffer> vae_state_[2];
  Buffer latent_, pixels_[2];  // [0]: steady, [1]: first
  std::unique_ptr<Ort::IoBinding> vae_bindings_[2][2];  // [first][parity]
  int vae_parity_ = 0;
};

}  // namespace arvc
