// A C-runtime session: runtime/plan_session.py and arvc/model/causal.py in C++. The causal loop (seeded
// noise, re-noising, the cache call, the clean-latent history and the prompt-switch re-cache) runs on
// the plan's graphs; with prefetch on, a worker thread computes the DiT of block b + 1 while the
// caller's thread decodes block b with the VAE, so at most two blocks of latents exist at any time.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <list>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "arvc.h"
#include "ort_stages.h"
#include "plan.h"
#include "slot_map.h"

namespace arvc {

using Context = std::vector<float>;  // [text_len * text_dim], zero rows after the prompt
using FrameSink = std::function<void(const uint8_t *rgb, int64_t frame_index)>;

class Stream {
 public:
  Stream(const std::string &plan_dir, const arvc_options &options);
  ~Stream();

  const Plan &plan() const { return plan_; }
  void info(arvc_info &out) const;
  void stats(arvc_stats &out) const;

  Context context_for_text(const char *text);
  Context context_for_embeddings(const float *emb, int64_t tokens, int64_t dim) const;

  void start(Context first, uint64_t seed);
  int next_block(const FrameSink &sink, size_t capacity_bytes, bool check_capacity);
  int64_t switch_prompt(Context ctx, int64_t at_block);
  int frames_of_block(int64_t block) const;
  int max_blocks() const;  // blocks a stream can hold; 0 = unbounded

 private:
  // the causal loop, on whichever thread runs the DiT
  void dit_block(int64_t block, float *x0_out);
  void apply_switches(int64_t block);
  void set_context(const Context &ctx);
  void denoise(const float *x, int frames, double t, int64_t frame_start, float *x0_out);
  void recache();
  void worker_main();
  void wait_idle(std::unique_lock<std::mutex> &lock);

  Plan plan_;
  int threads_;
  bool prefetch_;
  std::unique_ptr<OrtStages> stages_;
  int frame_tokens_, grid_h_, grid_w_;
  size_t frame_elems_;  // C * h * w: one latent frame
  size_t frame_bytes_;  // H * W * 3: one RGB frame

  // DiT state (touched only by the thread running the DiT)
  uint64_t seed_ = 0;
  int64_t dit_block_ = 0;  // blocks the causal loop has finished
  std::unique_ptr<SlotMap> slots_;
  std::vector<float> history_;  // [C, capacity_frames, h, w]
  std::list<std::pair<std::string, CrossKV>> prompts_;  // most recent first, at most 4
  std::vector<float> x_, x0_, noise_, scratch_, cos_, sin_;
  std::map<std::string, std::vector<int>> rope_written_;  // table input -> positions its buffer holds

  // pipeline (guarded by mu_)
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::thread worker_;
  bool stop_ = false, started_ = false, broken_ = false, busy_ = false;
  int64_t requested_ = 0;  // blocks whose DiT was requested (a switch can apply from here on)
  int64_t job_ = -1, done_ = -1;
  std::exception_ptr job_error_;
  std::deque<std::pair<int64_t, Context>> pending_;  // (block, context), in call order
  std::vector<float> latents_[2];  // block b's clean latents in latents_[b % 2]
  int64_t decoded_ = 0;            // blocks handed to the caller
  std::vector<float> vae_latent_;  // the caller's thread: one latent frame [C, h, w] for the VAE
  std::vector<uint8_t> rgb_;       // and one frame [H, W, 3] for the sink
  bool first_latent_ = true;

  // stats
  double t_start_ = 0, first_frame_s_ = -1, text_s_ = 0, dit_s_ = 0, vae_s_ = 0, last_block_s_ = 0;
  int64_t frames_ = 0, dit_calls_ = 0;
};

}  // namespace arvc
