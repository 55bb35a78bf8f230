#include "slot_map.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "error.h"

namespace arvc {

SlotMap::SlotMap(const CacheGeometry &g, int rope_limit)
    : g_(g), rope_limit_(rope_limit), ring_base_(g.sink), slot_frame_(g.capacity_frames(), -1) {}

int SlotMap::filled() const {
  int n = 0;
  while (n < static_cast<int>(slot_frame_.size()) && slot_frame_[n] >= 0) ++n;
  return n;
}

int SlotMap::slot_of(int64_t frame) const {
  if (!g_.window) {
    if (frame >= g_.max_frames)
      fail(ARVC_ERR_STATE, "global cache holds " + std::to_string(g_.max_frames) + " latent frames and frame " + std::to_string(frame) +
                               " overflows it; use a rolling window (--window 12 --sink 3) for long videos or raise --max-frames");
    return static_cast<int>(frame);
  }
  if (frame < g_.sink) return static_cast<int>(frame);
  const int64_t ring = g_.ring();
  return g_.sink + static_cast<int>(((frame - ring_base_) % ring + ring) % ring);  // Python's % is non-negative
}

void SlotMap::reset(int64_t first_frame, bool keep_sink) {
  const int keep = (keep_sink && g_.window) ? g_.sink : 0;
  for (size_t s = keep; s < slot_frame_.size(); ++s) slot_frame_[s] = -1;
  if (g_.window) ring_base_ = std::max<int64_t>(first_frame, g_.sink);
}

CallPlan SlotMap::plan(int64_t frame_start, int num_frames) {
  CallPlan c;
  for (int64_t f = frame_start; f < frame_start + num_frames; ++f) {
    c.frames.push_back(f);
    c.slots.push_back(slot_of(f));
  }
  const int filled_before = filled();
  if (*std::min_element(c.slots.begin(), c.slots.end()) > filled_before)
    fail(ARVC_ERR_STATE, "frames from " + std::to_string(frame_start) + " would leave a gap in the cache: blocks must be generated in order");
  for (size_t i = 0; i < c.frames.size(); ++i) slot_frame_[c.slots[i]] = c.frames[i];
  c.num_key_slots = filled();
  c.key_frames.assign(slot_frame_.begin(), slot_frame_.begin() + c.num_key_slots);
  if (!g_.relative_rope) {
    if (c.frames.back() >= rope_limit_)
      fail(ARVC_ERR_STATE, "latent frame " + std::to_string(c.frames.back()) + " is past the model's " + std::to_string(rope_limit_) +
                               " RoPE positions with absolute positions; compile the plan with relative RoPE (--rope relative) for unbounded length");
    c.query_positions.assign(c.frames.begin(), c.frames.end());  // below rope_limit: ints
    c.key_positions.assign(c.key_frames.begin(), c.key_frames.end());
  } else {
    const int sink = g_.window ? g_.sink : 0;
    int64_t oldest = -1;
    for (const int64_t f : c.key_frames)
      if (f >= sink && (oldest < 0 || f < oldest)) oldest = f;
    if (oldest < 0) oldest = sink;
    auto rel = [&](int64_t f) { return static_cast<int>(f < sink ? f : sink + f - oldest); };  // within the cache's frames
    for (const int64_t f : c.frames) c.query_positions.push_back(rel(f));
    for (const int64_t f : c.key_frames) c.key_positions.push_back(rel(f));
  }
  return c;
}

void rope_tables(const int axis_dims[3], const std::vector<int> &frame_positions, int h, int w,
                 std::vector<float> &cos_out, std::vector<float> &sin_out) {
  // arvc/model/rope.py: inv_freq = 10000^(-(2i)/d) per axis, angle = position * inv_freq in float64
  std::vector<double> inv[3];
  for (int a = 0; a < 3; ++a)
    for (int i = 0; i < axis_dims[a]; i += 2) inv[a].push_back(std::pow(10000.0, -static_cast<double>(i) / axis_dims[a]));
  const size_t half = inv[0].size() + inv[1].size() + inv[2].size();
  cos_out.resize(frame_positions.size() * h * w * half);
  sin_out.resize(cos_out.size());
  size_t k = 0;
  for (int fp : frame_positions)
    for (int r = 0; r < h; ++r)
      for (int c = 0; c < w; ++c) {
        const double pos[3] = {static_cast<double>(fp), static_cast<double>(r), static_cast<double>(c)};
        for (int a = 0; a < 3; ++a)
          for (double f : inv[a]) {
            const double ang = pos[a] * f;
            cos_out[k] = static_cast<float>(std::cos(ang));
            sin_out[k++] = static_cast<float>(std::sin(ang));
          }
      }
}

}  // namespace arvc
