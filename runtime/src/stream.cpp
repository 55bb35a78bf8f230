#include "stream.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <set>

#include "arvc_noise.h"
#include "error.h"

namespace arvc {
namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

constexpr size_t kPromptCache = 4;  // prompts whose cross K/V are kept, as plan_session.py

// [3, n, H, W] float in [-1, 1], frame j -> [H, W, 3] uint8, rounding as runtime/plan_session.py
// _to_uint8 (float32 clip, + 1, * 127.5, round half to even); compiled without FMA contraction.
void to_rgb(const float *pixels, int n, int j, int h, int w, uint8_t *rgb) {
  const size_t plane = static_cast<size_t>(h) * w;
  for (int c = 0; c < 3; ++c) {
    const float *src = pixels + (static_cast<size_t>(c) * n + j) * plane;
    for (size_t p = 0; p < plane; ++p) {
      float v = std::min(std::max(src[p], -1.0f), 1.0f);
      v = (v + 1.0f) * 127.5f;
      rgb[p * 3 + c] = static_cast<uint8_t>(std::nearbyint(v));
    }
  }
}

// Python's default (runtime/ort_backend.py physical_cores, psutil): one thread per physical core, read
// from Linux's CPU topology; the logical count where that is unavailable.
int physical_cores() {
  std::set<std::pair<std::string, std::string>> cores;
  for (unsigned cpu = 0;; ++cpu) {
    const std::string dir = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
    std::ifstream package(dir + "physical_package_id"), core(dir + "core_id");
    std::string p, c;
    if (!(package >> p) || !(core >> c)) break;
    cores.emplace(p, c);
  }
  return cores.empty() ? static_cast<int>(std::max(1u, std::thread::hardware_concurrency())) : static_cast<int>(cores.size());
}

}  // namespace

Stream::Stream(const std::string &plan_dir, const arvc_options &options)
    : plan_(read_plan(plan_dir, !options.skip_verify)),
      threads_(options.threads > 0 ? options.threads : physical_cores()),
      prefetch_(!options.no_prefetch) {
  load_onnxruntime(options.onnxruntime_library);
  try {
    stages_ = std::make_unique<OrtStages>(plan_, threads_);
  } catch (const Ort::Exception &e) {
    // the files passed their hashes, so the plan itself is bad: an integrity refusal, as runtime/ort_backend.py
    fail(ARVC_ERR_INTEGRITY, plan_dir + ": integrity check failed: ONNX Runtime cannot load the plan's graphs (" + e.what() +
                                 "); the plan is damaged, was not written by arvc compile, or needs a newer ONNX Runtime: "
                                 "recompile it with this arvc");
  }
  // the graphs' shapes are the manifest's (OrtStages checked them): these sizes are the ones they are bound with
  const auto &g = plan_.geometry;
  grid_h_ = plan_.latent_h / plan_.patch[1];
  grid_w_ = plan_.latent_w / plan_.patch[2];
  frame_tokens_ = grid_h_ * grid_w_;
  frame_elems_ = buffer_size({static_cast<size_t>(plan_.in_channels), static_cast<size_t>(plan_.latent_h), static_cast<size_t>(plan_.latent_w)},
                             "a latent frame");
  frame_bytes_ = buffer_size({static_cast<size_t>(plan_.width), static_cast<size_t>(plan_.height), 3}, "an RGB frame");
  for (auto &l : latents_) l.assign(buffer_size({frame_elems_, static_cast<size_t>(g.frames_per_block)}, "a block's latents"), 0.0f);
  history_.assign(buffer_size({frame_elems_, static_cast<size_t>(g.capacity_frames())}, "the latent history"), 0.0f);
  vae_latent_.assign(frame_elems_, 0.0f);
  rgb_.assign(frame_bytes_, 0);
  if (prefetch_) worker_ = std::thread([this] { worker_main(); });
}

Stream::~Stream() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (worker_.joinable()) worker_.join();  // after the DiT call in flight
}

// ---- prompts ---------------------------------------------------------------------------------------

Context Stream::context_for_text(const char *text) {
  if (plan_.vocab.empty())
    fail(ARVC_ERR_PROMPT, "this plan has no text encoder: pass prompt embeddings [L, " + std::to_string(plan_.text_dim) +
                              "] (e.g. umT5 output) with arvc_set_prompt_embeddings instead of text");
  std::vector<std::string> words;
  std::string w;
  for (const char *p = text;; ++p) {
    if (*p == '\0' || std::isspace(static_cast<unsigned char>(*p))) {
      if (!w.empty()) words.push_back(w);
      w.clear();
      if (*p == '\0') break;
    } else {
      w += static_cast<char>(std::tolower(static_cast<unsigned char>(*p)));
    }
  }
  if (words.empty()) fail(ARVC_ERR_PROMPT, "empty prompt");
  std::string unknown;
  for (const auto &word : words)
    if (!plan_.vocab.count(word)) unknown += (unknown.empty() ? "'" : ", '") + word + "'";
  if (!unknown.empty()) {
    std::vector<std::pair<int64_t, std::string>> vocab;
    for (const auto &[word, id] : plan_.vocab) vocab.emplace_back(id, word);
    std::sort(vocab.begin(), vocab.end());
    std::string all;
    for (const auto &[id, word] : vocab) all += (all.empty() ? "" : " ") + word;
    fail(ARVC_ERR_PROMPT, "unknown word(s) " + unknown + " in prompt '" + text + "'; this model's vocabulary is: " + all);
  }
  if (static_cast<int>(words.size()) > plan_.text_max_len)
    fail(ARVC_ERR_PROMPT, "prompt has " + std::to_string(words.size()) + " words; this model's text encoder takes at most " +
                              std::to_string(plan_.text_max_len));
  std::vector<int64_t> ids(plan_.text_max_len, 0);
  for (size_t i = 0; i < words.size(); ++i) ids[i] = plan_.vocab.at(words[i]);
  const auto emb = stages_->encode_text(ids, static_cast<int64_t>(words.size()));
  return context_for_embeddings(emb.data(), static_cast<int64_t>(emb.size()) / plan_.text_dim, plan_.text_dim);
}

Context Stream::context_for_embeddings(const float *emb, int64_t tokens, int64_t dim) const {
  if (dim != plan_.text_dim || tokens < 1)
    fail(ARVC_ERR_PROMPT, "prompt embeddings must be [L, " + std::to_string(plan_.text_dim) + "] with L >= 1 for this plan; got [" +
                              std::to_string(tokens) + ", " + std::to_string(dim) + "]");
  if (tokens > plan_.text_len)
    fail(ARVC_ERR_PROMPT, std::to_string(tokens) + " prompt tokens exceed this model's " + std::to_string(plan_.text_len) + "; truncate the prompt");
  const size_t n = static_cast<size_t>(tokens * dim);
  for (size_t i = 0; i < n; ++i)
    if (!std::isfinite(emb[i])) fail(ARVC_ERR_PROMPT, "prompt embeddings contain NaN or infinity");
  Context ctx(static_cast<size_t>(plan_.text_len) * plan_.text_dim, 0.0f);
  std::copy(emb, emb + n, ctx.begin());
  return ctx;
}

// ---- the causal loop (arvc/model/causal.py CausalLoop on PlanGenerator's hooks) ---------------------------

void Stream::set_context(const Context &ctx) {
  const std::string key(reinterpret_cast<const char *>(ctx.data()), ctx.size() * sizeof(float));
  auto it = std::find_if(prompts_.begin(), prompts_.end(), [&](const auto &p) { return p.first == key; });
  if (it == prompts_.end()) {  // the text stage runs once per prompt
    const double t0 = now_s();
    CrossKV kv = stages_->cross_kv(ctx);
    {
      std::lock_guard<std::mutex> lock(mu_);
      text_s_ += now_s() - t0;
    }
    prompts_.emplace_front(key, std::move(kv));
    if (prompts_.size() > kPromptCache) prompts_.pop_back();
  } else {
    prompts_.splice(prompts_.begin(), prompts_, it);
  }
  stages_->bind_cross(prompts_.front().second);
}

void Stream::denoise(const float *x, int frames, double t, int64_t frame_start, float *x0_out) {
  const CallPlan call = slots_->plan(frame_start, frames);
  if (frames != stages_->dit_frames())
    fail(ARVC_ERR_STATE, "a re-cache call of " + std::to_string(frames) + " frames does not fit the dit graph's " +
                             std::to_string(stages_->dit_frames()) + "; compile the plan with a window that is a multiple of frames_per_block");
  const int T = frame_tokens_, cap = plan_.geometry.capacity_frames();
  std::memcpy(stages_->dit_input("latents").data.get(), x, frame_elems_ * frames * sizeof(float));
  *stages_->dit_input("timestep").as<double>() = t;
  int64_t *rows = stages_->dit_input("write_index").as<int64_t>();
  for (size_t i = 0; i < call.slots.size(); ++i)
    for (int k = 0; k < T; ++k) *rows++ = static_cast<int64_t>(call.slots[i]) * T + k;
  uint8_t *valid = stages_->dit_input("key_valid").as<uint8_t>();
  for (int r = 0; r < cap * T; ++r) valid[r] = r < call.num_key_slots * T;
  auto tables = [&](const std::vector<int> &pos, const char *cos_name, const char *sin_name) {
    // positions repeat over a block's calls and, once the window is full, from block to block: the
    // tables in the bound buffers are recomputed only when they change
    std::vector<int> &written = rope_written_[cos_name];
    if (written == pos) return;
    rope_tables(plan_.rope_axis_dims.data(), pos, grid_h_, grid_w_, cos_, sin_);
    Buffer &c = stages_->dit_input(cos_name), &s = stages_->dit_input(sin_name);
    std::memcpy(c.data.get(), cos_.data(), c.bytes);
    std::memcpy(s.data.get(), sin_.data(), s.bytes);
    written = pos;
  };
  tables(call.query_positions, "rope_q_cos", "rope_q_sin");
  if (plan_.geometry.relative_rope) {
    std::vector<int> k_pos = call.key_positions;
    k_pos.resize(cap, 0);  // unfilled slots are masked out
    tables(k_pos, "rope_k_cos", "rope_k_sin");
  }
  const double t0 = now_s();
  const float *x0 = stages_->run_dit();
  const double dt = now_s() - t0;
  std::memcpy(x0_out, x0, frame_elems_ * frames * sizeof(float));
  std::lock_guard<std::mutex> lock(mu_);
  dit_s_ += dt;
  ++dit_calls_;
}

void Stream::recache() {  // LongLive KV re-cache under the prompt just set (sink kept)
  const auto &g = plan_.geometry;
  const int fpb = g.frames_per_block, cap = g.capacity_frames();
  const int64_t cur = dit_block_ * fpb;
  if (cur == 0) return;
  int64_t start = g.window ? cur - std::min<int64_t>(g.window, cur) : 0;
  const bool keep_sink = g.window > 0;
  if (keep_sink) start = std::max<int64_t>(start, g.sink);
  slots_->reset(start, keep_sink);
  const size_t hw = static_cast<size_t>(plan_.latent_h) * plan_.latent_w;
  for (int64_t f = start; f < cur;) {
    const int64_t end = std::min(cur, (f / fpb + 1) * fpb);  // stay on block boundaries
    const int n = static_cast<int>(end - f);
    x_.resize(frame_elems_ * n);
    for (int c = 0; c < plan_.in_channels; ++c)
      for (int i = 0; i < n; ++i)
        std::memcpy(&x_[(static_cast<size_t>(c) * n + i) * hw], &history_[(static_cast<size_t>(c) * cap + (f + i) % cap) * hw], hw * sizeof(float));
    scratch_.resize(x_.size());
    denoise(x_.data(), n, 0.0, f, scratch_.data());
    f = end;
  }
}

void Stream::apply_switches(int64_t block) {
  std::vector<Context> due;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = pending_.begin(); it != pending_.end();) {
      if (it->first <= block) {
        due.push_back(std::move(it->second));
        it = pending_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (const auto &ctx : due) {
    set_context(ctx);
    recache();
  }
}

void Stream::dit_block(int64_t block, float *x0_out) {
  if (block != dit_block_) fail(ARVC_ERR_STATE, "internal: DiT block " + std::to_string(block) + " requested out of order");
  const double t_block = now_s();
  apply_switches(block);
  const auto &g = plan_.geometry;
  const int F = g.frames_per_block, cap = g.capacity_frames();
  const int64_t f0 = block * F;
  const size_t n = frame_elems_ * F;
  x_.resize(n);
  noise_.resize(n);
  x0_.resize(n);
  scratch_.resize(n);
  arvc_noise_fill(seed_, static_cast<uint64_t>(block), 0, x_.data(), n);
  const auto &ts = plan_.timesteps;
  for (size_t i = 0; i < ts.size(); ++i) {
    denoise(x_.data(), F, ts[i], f0, x0_.data());
    if (i + 1 < ts.size()) {
      // x = (1 - s) x0 + s eps with float32 scalars, as torch evaluates (1 - s) * x0 + s * eps
      const double s = ts[i + 1] / 1000.0;
      const float a = static_cast<float>(1.0 - s), b = static_cast<float>(s);
      arvc_noise_fill(seed_, static_cast<uint64_t>(block), i + 1, noise_.data(), n);
      for (size_t k = 0; k < n; ++k) {
        const float u = a * x0_[k], v = b * noise_[k];
        x_[k] = u + v;
      }
    }
  }
  denoise(x0_.data(), F, 0.0, f0, scratch_.data());  // cache call: output discarded, K/V written
  const size_t hw = static_cast<size_t>(plan_.latent_h) * plan_.latent_w;
  for (int c = 0; c < plan_.in_channels; ++c)
    for (int i = 0; i < F; ++i)
      std::memcpy(&history_[(static_cast<size_t>(c) * cap + (f0 + i) % cap) * hw], &x0_[(static_cast<size_t>(c) * F + i) * hw], hw * sizeof(float));
  std::memcpy(x0_out, x0_.data(), n * sizeof(float));
  ++dit_block_;
  std::lock_guard<std::mutex> lock(mu_);
  last_block_s_ = now_s() - t_block;
}

// ---- pipeline ------------------------------------------------------------------------------------

void Stream::worker_main() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || job_ >= 0; });
    if (stop_) return;
    const int64_t b = job_;
    busy_ = true;
    job_ = -1;
    lock.unlock();
    std::exception_ptr error;
    try {
      dit_block(b, latents_[b % 2].data());
    } catch (...) {
      error = std::current_exception();
    }
    lock.lock();
    busy_ = false;
    if (error) job_error_ = error;
    else done_ = b;
    cv_.notify_all();
  }
}

void Stream::wait_idle(std::unique_lock<std::mutex> &lock) {
  cv_.wait(lock, [&] { return job_ < 0 && !busy_; });
}

int Stream::max_blocks() const {
  const auto &g = plan_.geometry;
  if (!g.window) return g.max_frames / g.frames_per_block;
  if (!g.relative_rope) return plan_.rope_max_positions / g.frames_per_block;
  return 0;
}

int Stream::frames_of_block(int64_t block) const {
  auto before = [&](int64_t b) -> int64_t {
    const int64_t latents = b * plan_.geometry.frames_per_block;
    return latents == 0 ? 0 : 1 + plan_.temporal_factor * (latents - 1);
  };
  return static_cast<int>(before(block + 1) - before(block));
}

void Stream::start(Context first, uint64_t seed) {
  std::unique_lock<std::mutex> lock(mu_);
  job_ = -1;  // a prefetch not yet picked up is dropped; one in flight is waited for
  wait_idle(lock);
  pending_.clear();
  pending_.emplace_back(0, std::move(first));
  job_error_ = nullptr;
  started_ = true;
  broken_ = false;
  seed_ = seed;
  dit_block_ = requested_ = decoded_ = 0;
  done_ = -1;
  first_latent_ = true;
  slots_ = std::make_unique<SlotMap>(plan_.geometry, plan_.rope_max_positions);
  std::fill(history_.begin(), history_.end(), 0.0f);
  prompts_.clear();
  stages_->reset_vae();
  t_start_ = now_s();
  first_frame_s_ = -1;
  text_s_ = dit_s_ = vae_s_ = last_block_s_ = 0;
  frames_ = dit_calls_ = 0;
}

int64_t Stream::switch_prompt(Context ctx, int64_t at_block) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!started_) fail(ARVC_ERR_STATE, "switch_prompt changes a running stream; start one with arvc_set_prompt first");
  if (broken_) fail(ARVC_ERR_STATE, "the stream failed earlier; start a new one with arvc_set_prompt");
  if (at_block < 0) at_block = requested_;
  if (at_block < requested_)
    fail(ARVC_ERR_STATE, "block " + std::to_string(at_block) + " has already started; the earliest block a switch can apply to is " +
                             std::to_string(requested_));
  pending_.emplace_back(at_block, std::move(ctx));
  return at_block;
}

int Stream::next_block(const FrameSink &sink, size_t capacity_bytes, bool check_capacity) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!started_) fail(ARVC_ERR_STATE, "no prompt yet: start a stream with arvc_set_prompt (or arvc_set_prompt_embeddings) first");
  if (broken_) fail(ARVC_ERR_STATE, "the stream failed earlier; start a new one with arvc_set_prompt");
  const int64_t d = decoded_;
  const int frames = frames_of_block(d);
  const size_t needed = buffer_size({static_cast<size_t>(frames), frame_bytes_}, "a block's frames");
  if (check_capacity && capacity_bytes < needed)
    fail(ARVC_ERR_BUFFER_TOO_SMALL, "block " + std::to_string(d) + " has " + std::to_string(frames) + " frames of " + std::to_string(plan_.width) + "x" +
                                        std::to_string(plan_.height) + " RGB: it needs " + std::to_string(needed) + " bytes, the buffer has " +
                                        std::to_string(capacity_bytes) + " (arvc_info.max_block_bytes fits every block); nothing was generated");
  const int limit = max_blocks();
  if (limit && d >= limit)
    fail(ARVC_ERR_STATE, "this plan's cache holds " + std::to_string(limit) + " blocks (" +
                             (plan_.geometry.window ? "absolute RoPE positions run out" : "global attention keeps every frame") +
                             "); compile with a rolling window and relative RoPE (--window 12 --sink 3 --rope relative) for unbounded streams");
  try {
    if (prefetch_) {
      if (requested_ <= d) {
        job_ = d;
        requested_ = d + 1;
        cv_.notify_all();
      }
      cv_.wait(lock, [&] { return done_ >= d || job_error_; });
      if (job_error_) std::rethrow_exception(std::exchange(job_error_, nullptr));
      if (!limit || d + 1 < limit) {  // the DiT of the next block runs while this one is decoded
        job_ = d + 1;
        requested_ = d + 2;
        cv_.notify_all();
      }
      lock.unlock();
    } else {
      requested_ = d + 1;
      lock.unlock();
      dit_block(d, latents_[d % 2].data());
    }
    // VAE, one latent frame at a time, frames out as soon as they exist
    const auto &g = plan_.geometry;
    const size_t hw = static_cast<size_t>(plan_.latent_h) * plan_.latent_w;
    const std::vector<float> &block = latents_[d % 2];
    for (int i = 0; i < g.frames_per_block; ++i) {
      for (int c = 0; c < plan_.in_channels; ++c)
        std::memcpy(&vae_latent_[c * hw], &block[(static_cast<size_t>(c) * g.frames_per_block + i) * hw], hw * sizeof(float));
      const double t0 = now_s();
      int n = 0;
      const float *pixels = stages_->run_vae(vae_latent_.data(), first_latent_, &n);
      const double t1 = now_s();
      first_latent_ = false;
      for (int j = 0; j < n; ++j) {
        to_rgb(pixels, n, j, plan_.height, plan_.width, rgb_.data());
        int64_t index;
        {
          std::lock_guard<std::mutex> stat_lock(mu_);
          if (j == 0) vae_s_ += t1 - t0;
          if (first_frame_s_ < 0) first_frame_s_ = now_s() - t_start_;
          index = frames_++;
        }
        sink(rgb_.data(), index);  // the caller's code: never under the lock
      }
    }
  } catch (...) {
    if (!lock.owns_lock()) lock.lock();
    broken_ = true;
    throw;
  }
  if (!lock.owns_lock()) lock.lock();
  ++decoded_;
  return frames;
}

void Stream::info(arvc_info &out) const {
  const auto &g = plan_.geometry;
  out.width = plan_.width;
  out.height = plan_.height;
  out.fps = plan_.fps;
  out.latent_frames_per_block = g.frames_per_block;
  out.first_block_frames = frames_of_block(0);
  out.block_frames = frames_of_block(1);
  out.max_block_bytes = buffer_size({static_cast<size_t>(std::max(out.first_block_frames, out.block_frames)), frame_bytes_}, "a block's frames");
  out.window = g.window;
  out.sink = g.sink;
  out.max_blocks = max_blocks();
  out.has_text_encoder = !plan_.vocab.empty();
  out.text_dim = plan_.text_dim;
  out.text_len = plan_.text_len;
  out.kv_cache_bytes = stages_->kv_cache_bytes();
  out.vae_state_bytes = stages_->vae_state_bytes();
  out.precision = plan_.precision.c_str();
}

void Stream::stats(arvc_stats &out) const {
  std::lock_guard<std::mutex> lock(mu_);
  out.blocks = decoded_;
  out.frames = frames_;
  out.wall_s = started_ ? now_s() - t_start_ : 0.0;
  out.first_frame_s = first_frame_s_;
  out.text_s = text_s_;
  out.dit_s = dit_s_;
  out.vae_s = vae_s_;
  out.dit_calls = dit_calls_;
  out.last_block_s = last_block_s_;
}

}  // namespace arvc
