// Host-side cache bookkeeping and RoPE tables: arvc/model/cache_geometry.py SlotMap and arvc/model/rope.py in C++,
// statement for statement, so the C and Python runtimes feed the dit graph the same rows and tables.
#pragma once

#include <cstdint>
#include <vector>

#include "plan.h"

namespace arvc {

struct CallPlan {  // where one DiT call writes and what it reads (positions: RoPE frame positions)
  std::vector<int64_t> frames, key_frames;  // a rolling window's stream has no end: frame indices are 64-bit
  std::vector<int> slots, query_positions, key_positions;
  int num_key_slots = 0;
};

class SlotMap {
 public:
  SlotMap(const CacheGeometry &g, int rope_limit);
  int filled() const;
  int slot_of(int64_t frame) const;
  void reset(int64_t first_frame, bool keep_sink);  // forget cached frames before a re-cache from first_frame
  CallPlan plan(int64_t frame_start, int num_frames);

 private:
  CacheGeometry g_;
  int rope_limit_;
  int64_t ring_base_;
  std::vector<int64_t> slot_frame_;
};

// cos and sin [F * h * w, D/2] (float32 of float64 angles) of frame positions F on an h x w token grid.
void rope_tables(const int axis_dims[3], const std::vector<int> &frame_positions, int h, int w,
                 std::vector<float> &cos_out, std::vector<float> &sin_out);

}  // namespace arvc
