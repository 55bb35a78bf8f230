// Seeded C API call sequences on real plans (tools/fuzz_plans.py runs it on the sanitized build):
//   capi_fuzz [--graphs-may-fail] SEED SEQUENCES MAX_BLOCKS PLAN [PLAN...]
// Each sequence may first try arvc_open with arguments it must refuse; it opens a plan with random options, usually
// starts a stream with a valid prompt (as a real caller would), then calls the API in a random order with
// random and hostile arguments (short, empty and NULL buffers, wrong struct sizes, embeddings of any shape
// with NaN, prompts of unknown words or bytes, switches at any block), and closes it, sometimes with a block
// in flight. Every buffer is allocated at exactly the size the call is told, so a read or write past it is an
// AddressSanitizer report. The API must answer with statuses only; this program checks what a status
// promises (a message on failure, the block's frames on success) and prints one JSON line per sequence,
// flushed, so that the sequence a crash ended is the one after the last line.
// --graphs-may-fail: the plans' graphs were mutated past every static check (tools/fuzz_plans.py's onnx family),
// so ONNX Runtime may fail running one (a constant asking for terabytes): ARVC_ERR_RUNTIME or
// ARVC_ERR_OUT_OF_MEMORY from a call is then the runtime's answer, not a violation (Python raises
// PlanIntegrityError there), and is counted on stdout as "RUNTIME-FAILURES n".
// Exit 0: the contract held; 1: a violation (printed as "VIOLATION: ..."); 2: usage.
#include <arvc.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

namespace {

struct Rng {  // splitmix64: the same sequence for a seed on every machine
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  int64_t below(int64_t n) { return static_cast<int64_t>(next() % static_cast<uint64_t>(n)); }
  bool chance(int percent) { return below(100) < percent; }
  template <class T>
  T pick(const std::vector<T> &v) { return v[static_cast<size_t>(below(static_cast<int64_t>(v.size())))]; }
};

int violations = 0;
bool graphs_may_fail = false;
int runtime_failures = 0;

void violation(const std::string &what) {
  std::fprintf(stderr, "VIOLATION: %s (last error: '%s')\n", what.c_str(), arvc_last_error());
  ++violations;
}

// What every call promises: a known status; a message exactly when it failed; never a runtime failure or
// an out-of-memory on a valid plan with arguments this small.
void check_status(arvc_status s, const char *call) {
  const bool known = s >= ARVC_OK && s <= ARVC_ERR_OUT_OF_MEMORY;
  if (!known) return violation(std::string(call) + " returned unknown status " + std::to_string(s));
  if ((s == ARVC_OK) != (arvc_last_error()[0] == '\0'))
    violation(std::string(call) + ": status " + arvc_status_string(s) + " with message '" + arvc_last_error() + "'");
  if (graphs_may_fail && (s == ARVC_ERR_RUNTIME || s == ARVC_ERR_OUT_OF_MEMORY)) {
    ++runtime_failures;
    return;
  }
  if (s == ARVC_ERR_RUNTIME || s == ARVC_ERR_OUT_OF_MEMORY || s == ARVC_ERR_PLAN || s == ARVC_ERR_INTEGRITY)
    violation(std::string(call) + ": " + arvc_status_string(s) + " on a valid plan");
}

// heap buffers of exactly n bytes (at least 1: malloc(0) may return NULL), so ASan sees any overrun
struct Bytes {
  std::vector<uint8_t> v;
  explicit Bytes(size_t n) : v(n ? n : 1, 0xA5) {}
  uint8_t *data() { return v.data(); }
};

const std::vector<int64_t> kEdge = {0, 1, -1, 2, 3, 7, 15, 16, 17, 63, 64, 65, 1024, 1 << 20, int64_t(1) << 31,
                                    int64_t(1) << 40, std::numeric_limits<int64_t>::max(),
                                    std::numeric_limits<int64_t>::min()};

class Sequence {
 public:
  Sequence(Rng &rng, const char *plan, int max_blocks) : rng_(rng), plan_(plan), max_blocks_(max_blocks) {}

  void run() {
    if (rng_.chance(30)) hostile_open();
    arvc_options o = arvc_options_default();
    o.threads = static_cast<int32_t>(rng_.below(3));
    o.no_prefetch = rng_.chance(30);
    o.skip_verify = rng_.chance(70);
    const arvc_status st = arvc_open(plan_, &o, &s_);
    count(st, "arvc_open");
    if (st == ARVC_OK) {
      info_.size = sizeof info_;
      count(arvc_get_info(s_, &info_), "arvc_get_info");
      frame_bytes_ = static_cast<size_t>(info_.width) * info_.height * 3;
      if (rng_.chance(80)) started(arvc_set_prompt(s_, "a red circle moving right", seed()), "arvc_set_prompt");
      const int steps = 4 + static_cast<int>(rng_.below(16));
      for (int i = 0; i < steps && blocks_ < max_blocks_; ++i) step();
      arvc_close(s_);  // sometimes with a prefetched block in flight: close must wait for it
    }
    std::printf("{\"plan\": \"%s\", \"calls\": %d, \"ok\": %d, \"blocks\": %d, \"frames\": %lld}\n", plan_, calls_, oks_,
                blocks_, static_cast<long long>(frames_));
    std::fflush(stdout);
  }

 private:
  // arguments arvc_open must refuse before it loads anything: a wrong options size, threads outside 0..256, no plan
  void hostile_open() {
    arvc_options o = arvc_options_default();
    const char *plan = plan_;
    switch (rng_.below(4)) {
      case 0: o.size = static_cast<uint32_t>(rng_.pick(std::vector<int64_t>{0, 4, sizeof(arvc_options) - 1})); break;
      case 1: o.threads = static_cast<int32_t>(rng_.pick(std::vector<int64_t>{-1, 257, 1 << 20, INT32_MAX, INT32_MIN})); break;
      case 2: plan = rng_.pick(std::vector<const char *>{nullptr, "", "/nonexistent/plan", "/dev/null", "/"}); break;
      default: {
        arvc_status st = arvc_open(plan_, &o, nullptr);
        ++calls_;
        if (st != ARVC_ERR_INVALID_ARGUMENT) violation("arvc_open(out NULL): status " + std::to_string(st));
        return;
      }
    }
    arvc_session *s = reinterpret_cast<arvc_session *>(&o);  // must come back NULL
    const arvc_status st = arvc_open(plan, &o, &s);
    ++calls_;
    if ((st != ARVC_ERR_INVALID_ARGUMENT && st != ARVC_ERR_PLAN) || s != nullptr || arvc_last_error()[0] == '\0')
      violation("arvc_open with hostile arguments: status " + std::to_string(st) + (s ? ", *out not NULL" : ""));
    if (st == ARVC_OK) arvc_close(s);
  }

  void count(arvc_status s, const char *call) {
    check_status(s, call);
    ++calls_;
    oks_ += s == ARVC_OK;
  }

  void started(arvc_status s, const char *call) {
    count(s, call);
    if (s == ARVC_OK) first_next_ = true;
  }

  std::string prompt() {
    switch (rng_.below(8)) {
      case 0: return "";
      case 1: return " \t\n ";
      case 2: return "a purple elephant";  // unknown words
      case 3: {                            // far longer than the encoder takes, and than any message should be
        std::string p;
        for (int i = 0; i < 5000; ++i) p += rng_.chance(50) ? "red " : "zzz ";
        return p;
      }
      case 4: return std::string("red\xff\xfe circle \x01\x7f");
      default: {
        std::string p;
        const int n = 1 + static_cast<int>(rng_.below(info_.text_len + 4));
        for (int i = 0; i < n; ++i) p += (i ? " " : "") + rng_.pick(vocab_);
        return p;
      }
    }
  }

  uint64_t seed() { return rng_.chance(50) ? rng_.below(1000) : rng_.next(); }

  int64_t edge_or(int64_t usual) { return rng_.chance(60) ? usual : rng_.pick(kEdge); }

  // embeddings [tokens, dim]: a buffer of exactly tokens * dim floats when that is small, else of the most
  // the plan may read (text_len x text_dim), which a correct reader never exceeds after refusing the shape
  std::vector<float> embeddings(int64_t tokens, int64_t dim) {
    const int64_t most = static_cast<int64_t>(info_.text_len) * info_.text_dim;
    const bool small = tokens > 0 && dim > 0 && tokens <= most && dim <= most && tokens * dim <= 4 * most;
    std::vector<float> e(static_cast<size_t>(small ? tokens * dim : most));
    for (auto &x : e) x = static_cast<float>(rng_.below(2001) - 1000) / 1000.0f;
    if (!e.empty() && rng_.chance(25)) {
      const float bad[] = {std::nanf(""), std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                           std::numeric_limits<float>::max(), std::numeric_limits<float>::denorm_min()};
      e[static_cast<size_t>(rng_.below(static_cast<int64_t>(e.size())))] = bad[rng_.below(5)];
    }
    return e;
  }

  void step() {
    switch (rng_.below(11)) {
      case 0: started(arvc_set_prompt(s_, prompt().c_str(), seed()), "arvc_set_prompt"); break;
      case 1: {
        const int64_t tokens = edge_or(1 + rng_.below(info_.text_len)), dim = edge_or(info_.text_dim);
        auto e = embeddings(tokens, dim);
        started(arvc_set_prompt_embeddings(s_, rng_.chance(10) ? nullptr : e.data(), tokens, dim, seed()),
                "arvc_set_prompt_embeddings");
        break;
      }
      case 2: case 3: case 4: next_block(); break;
      case 5: next_block_cb(); break;
      case 6: {
        int64_t at = 0;
        const int64_t block = rng_.chance(50) ? -1 + rng_.below(max_blocks_ + 2) : rng_.pick(kEdge);
        count(arvc_switch_prompt(s_, prompt().c_str(), block, rng_.chance(20) ? nullptr : &at), "arvc_switch_prompt");
        break;
      }
      case 7: {
        int64_t at = 0;
        const int64_t tokens = edge_or(1 + rng_.below(info_.text_len)), dim = edge_or(info_.text_dim);
        auto e = embeddings(tokens, dim);
        count(arvc_switch_prompt_embeddings(s_, e.data(), tokens, dim, edge_or(-1 + rng_.below(max_blocks_ + 2)), &at),
              "arvc_switch_prompt_embeddings");
        break;
      }
      case 8: sized_struct<arvc_info>(arvc_get_info, "arvc_get_info"); break;
      case 9: sized_struct<arvc_stats>(arvc_get_stats, "arvc_get_stats"); break;
      default: {  // wrong-order and NULL-argument calls that must be refused
        count(arvc_next_block(s_, nullptr, info_.max_block_bytes, nullptr), "arvc_next_block(NULL)");
        count(arvc_next_block_cb(s_, nullptr, nullptr, nullptr), "arvc_next_block_cb(NULL)");
        count(arvc_set_prompt(s_, nullptr, 0), "arvc_set_prompt(NULL)");
        count(arvc_switch_prompt(s_, nullptr, -1, nullptr), "arvc_switch_prompt(NULL)");
        count(arvc_get_info(s_, nullptr), "arvc_get_info(NULL)");
        break;
      }
    }
  }

  // a block made: its frame count is the stream's (block 0 of a stream has first_block_frames), and fits
  void made_block(int32_t n, bool counted, size_t capacity) {
    const int32_t want = first_next_ ? info_.first_block_frames : info_.block_frames;
    if (counted && n != want) violation("a block of " + std::to_string(n) + " frames, expected " + std::to_string(want));
    if (counted && static_cast<size_t>(n) * frame_bytes_ > capacity)
      violation("arvc_next_block: OK for " + std::to_string(n) + " frames in " + std::to_string(capacity) + " bytes");
    ++blocks_;
    frames_ += want;
    first_next_ = false;
  }

  void next_block() {
    const size_t full = info_.max_block_bytes;
    const size_t capacity = rng_.pick(std::vector<size_t>{full, full, full + 7, full - 1, frame_bytes_, frame_bytes_ - 1,
                                                         static_cast<size_t>(info_.block_frames) * frame_bytes_, 1, 0});
    Bytes buf(capacity);
    int32_t n = -1;
    const arvc_status st = arvc_next_block(s_, buf.data(), capacity, rng_.chance(15) ? nullptr : &n);
    count(st, "arvc_next_block");
    if (st == ARVC_ERR_BUFFER_TOO_SMALL && capacity >= full) violation("arvc_next_block: too small at max_block_bytes");
    if (st == ARVC_OK) made_block(n, n != -1, capacity);
  }

  struct Seen {
    const arvc_info *info;
    int64_t next_index;
    int frames;
    unsigned sum;
    bool bad;
  };

  static void on_frame(void *user, const uint8_t *rgb, int64_t index, int32_t width, int32_t height) {
    auto *seen = static_cast<Seen *>(user);
    if (width != seen->info->width || height != seen->info->height || (seen->next_index >= 0 && index != seen->next_index))
      seen->bad = true;
    seen->next_index = index + 1;
    for (size_t i = 0, n = static_cast<size_t>(width) * height * 3; i < n; i += 97) seen->sum += rgb[i];  // readable
    seen->sum += rgb[static_cast<size_t>(width) * height * 3 - 1];
    ++seen->frames;
  }

  void next_block_cb() {
    Seen seen{&info_, -1, 0, 0, false};
    int32_t n = -1;
    const arvc_status st = arvc_next_block_cb(s_, on_frame, &seen, &n);
    count(st, "arvc_next_block_cb");
    if (seen.bad) violation("arvc_next_block_cb: a frame of the wrong size or out of order");
    if (st == ARVC_OK && seen.frames != n) violation("arvc_next_block_cb: " + std::to_string(seen.frames) + " callbacks for " +
                                                     std::to_string(n) + " frames");
    if (st == ARVC_OK) made_block(n, true, std::numeric_limits<size_t>::max());
  }

  Rng &rng_;
  const char *plan_;
  int max_blocks_;
  arvc_session *s_ = nullptr;
  arvc_info info_{};
  size_t frame_bytes_ = 0;
  const std::vector<std::string> vocab_ = {"a", "red", "circle", "moving", "right", "on", "dark", "blue", "background",
                                          "green", "square"};  // the tiny model's words
  // The struct's size field says anything; the struct is exactly that big (at least the field): only a size
  // that holds the whole struct may succeed.
  template <class T>
  void sized_struct(arvc_status (*get)(const arvc_session *, T *), const char *call) {
    const uint32_t size = static_cast<uint32_t>(rng_.pick(std::vector<int64_t>{0, 4, sizeof(T) - 1, sizeof(T),
                                                                             sizeof(T) + 64}));
    Bytes b(std::max<size_t>(size, sizeof(uint32_t)));
    std::memcpy(b.data(), &size, sizeof size);
    const arvc_status st = get(s_, reinterpret_cast<T *>(b.data()));
    count(st, call);
    if ((st == ARVC_OK) != (size >= sizeof(T))) violation(std::string(call) + " with size " + std::to_string(size));
  }

  int calls_ = 0, oks_ = 0, blocks_ = 0;
  int64_t frames_ = 0;
  bool first_next_ = false;  // the next block is block 0 of a stream
};

}  // namespace

int main(int argc, char **argv) {
  if (argc > 1 && std::strcmp(argv[1], "--graphs-may-fail") == 0) {
    graphs_may_fail = true;
    --argc;
    ++argv;
  }
  if (argc < 5) {
    std::fprintf(stderr, "usage: capi_fuzz [--graphs-may-fail] SEED SEQUENCES MAX_BLOCKS PLAN [PLAN...]\n");
    return 2;
  }
  Rng rng{std::strtoull(argv[1], nullptr, 10)};
  const int sequences = std::atoi(argv[2]), max_blocks = std::atoi(argv[3]);
  for (int p = 4; p < argc; ++p)
    for (int i = 0; i < sequences; ++i) Sequence(rng, argv[p], max_blocks).run();
  if (graphs_may_fail) std::printf("RUNTIME-FAILURES %d\n", runtime_failures);
  return violations ? 1 : 0;
}
