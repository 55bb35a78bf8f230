// Stream a compiled arvc plan to a video file through the C API (runtime/include/arvc.h).
//
//   arvc_stream PLAN -o out.y4m [--prompt TEXT] [--seconds S | --frames N] [--seed N] [--threads N]
//               [--switch SECONDS TEXT]... [--callback] [--no-prefetch] [--onnxruntime LIBONNXRUNTIME.so]
//
// out.y4m: YUV4MPEG2, 4:4:4, full-range BT.601 (plays in ffplay/mpv, converts with ffmpeg); out.rgb: raw
// RGB24 frames (ffmpeg -f rawvideo -pix_fmt rgb24 -s WxH). The frames equal Python's
// arvc.load(PLAN, threads=N).stream(TEXT, frames=..., seed=N, switches=[(SECONDS, TEXT)]) byte for byte.
//
// The arguments follow docs/plan-validation.md "Inputs of a stream"; anything else is refused (exit 2) before
// any work. The video goes to a temporary file beside OUT with a unique name (created with O_EXCL, so never
// through a link planted there), renamed to OUT once it is whole and on disk; an error or SIGINT/SIGTERM/SIGHUP
// removes it, and a write error (full disk, `ulimit -f`, I/O error) exits 1 naming it. OUT is untouched then.
// One left by a killed run is removed by the next run writing there (examples/temp_owner.h).
#include <arvc.h>

#include "temp_owner.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace {

// The temporary's path, for the signal handler: a static buffer, since the handler may only call
// async-signal-safe functions (unlink, signal, raise; a lock-free atomic).
constexpr const char *kPartKind = ".part";
char g_part[4096];
std::atomic<bool> g_part_live{false};

void remove_part_and_die(int sig) {
  if (g_part_live) unlink(g_part);
  signal(sig, SIG_DFL);
  raise(sig);  // the process ends by the signal, as it would have without this handler
}

void on_exit_signals(void (*handler)(int)) {
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) {
    struct sigaction now {}, before {};
    now.sa_handler = handler;
    sigemptyset(&now.sa_mask);
    sigaction(sig, &now, &before);
    if (before.sa_handler == SIG_IGN) sigaction(sig, &before, nullptr);  // ignored (nohup): stays ignored
  }
}

// Blocked while a session opens, the runtime's threads keep them blocked: the main thread takes them, so
// blocking them there guards a step against the handler.
void block_exit_signals(int how) {
  sigset_t set;
  sigemptyset(&set);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&set, sig);
  pthread_sigmask(how, &set, nullptr);
}

struct Writer {
  FILE *f = nullptr;
  bool y4m = false;
  int width = 0, height = 0;
  int64_t frames_left = 0;
  int error = 0;  // the errno of the first failed write: the stream stops at the next block
  std::vector<uint8_t> planes;

  void put(const void *data, size_t n) {
    if (!error && std::fwrite(data, 1, n, f) != n) error = errno ? errno : EIO;
  }

  // RGB -> full-range BT.601 YCbCr in 16-bit fixed point (JPEG's constants), rounded to nearest
  void write(const uint8_t *rgb) {
    if (frames_left <= 0 || error) return;
    --frames_left;
    const size_t n = static_cast<size_t>(width) * height;
    if (!y4m) {
      put(rgb, n * 3);
      return;
    }
    planes.resize(n * 3);
    for (size_t p = 0; p < n; ++p) {
      const int r = rgb[3 * p], g = rgb[3 * p + 1], b = rgb[3 * p + 2];
      const int y = (19595 * r + 38470 * g + 7471 * b + 32768) >> 16;
      const int cb = ((-11059 * r - 21709 * g + 32768 * b + 32768) >> 16) + 128;
      const int cr = ((32768 * r - 27439 * g - 5329 * b + 32768) >> 16) + 128;
      planes[p] = static_cast<uint8_t>(std::clamp(y, 0, 255));
      planes[n + p] = static_cast<uint8_t>(std::clamp(cb, 0, 255));
      planes[2 * n + p] = static_cast<uint8_t>(std::clamp(cr, 0, 255));
    }
    put("FRAME\n", 6);
    put(planes.data(), planes.size());
  }

  // flush, fsync, close: the first error of any of them (0 when the file is whole and on disk)
  int finish() {
    if (!error && std::fflush(f) != 0) error = errno;
    if (!error && fsync(fileno(f)) != 0) error = errno;
    if (std::fclose(f) != 0 && !error) error = errno;
    f = nullptr;
    return error;
  }
};

void on_frame(void *user, const uint8_t *rgb, int64_t, int32_t, int32_t) { static_cast<Writer *>(user)->write(rgb); }

int usage(const std::string &why) {
  std::fprintf(stderr,
               "arvc_stream: %s\nusage: arvc_stream PLAN -o OUT.y4m|OUT.rgb [--prompt TEXT] [--seconds S | --frames N] [--seed N] "
               "[--threads N] [--switch SECONDS TEXT]... [--callback] [--no-prefetch] [--onnxruntime LIB]\n",
               why.c_str());
  return 2;
}

int check(arvc_status s, const char *what) {
  if (s == ARVC_OK) return 0;
  std::fprintf(stderr, "arvc_stream: %s failed (%s): %s\n", what, arvc_status_string(s), arvc_last_error());
  return 1;
}

int write_failed(const std::string &out, int err) {
  const char *fix = err == ENOSPC || err == EDQUOT ? "free space or choose another -o"
                    : err == EFBIG                 ? "raise the file size limit (ulimit -f) or choose another -o"
                    : err == EIO                   ? "check the disk or choose another -o"
                                                   : "choose a writable -o";
  std::fprintf(stderr, "arvc_stream: %s: cannot write: %s (errno %d); %s\n", out.c_str(), std::strerror(err), err, fix);
  return 1;
}

// Whole-string parsers: no sign where none belongs, no whitespace, no trailing text, no saturation.
bool parse_u64(const char *s, uint64_t &v) {
  if (!(*s >= '0' && *s <= '9')) return false;  // strtoull would take " 5", "+5" and negate "-1"
  char *end = nullptr;
  errno = 0;
  const unsigned long long x = std::strtoull(s, &end, 10);
  if (errno == ERANGE || *end != '\0') return false;
  v = x;
  return true;
}

bool parse_i64(const char *s, int64_t &v) {
  const bool negative = *s == '-';
  uint64_t x = 0;
  if (!parse_u64(s + negative, x) || x > static_cast<uint64_t>(INT64_MAX)) return false;
  v = negative ? -static_cast<int64_t>(x) : static_cast<int64_t>(x);
  return true;
}

bool parse_finite(const char *s, double &v) {
  if (*s == '\0' || std::strchr(" \t\n\v\f\r", *s)) return false;
  char *end = nullptr;
  errno = 0;
  v = std::strtod(s, &end);
  return *end == '\0' && std::isfinite(v);  // a finite value too large for a double (1e999) reads as inf
}

std::string quoted(const char *s) {
  std::string q = s;
  if (q.size() > 40) q = q.substr(0, 40) + "...";
  return "'" + q + "'";
}

// A new file beside `out`, created with O_EXCL under a name no other run uses; its path goes to g_part. Parts a
// killed run left there are removed first, when their owner is provably gone (temp_owner.h).
int open_part(const std::string &out, FILE **f) {
  const size_t slash = out.rfind('/');
  const std::string dir = slash == std::string::npos ? "" : out.substr(0, slash + 1);
  const std::string base = slash == std::string::npos ? out : out.substr(slash + 1);
  arvc_tool::clean_stale(slash == std::string::npos ? "." : slash == 0 ? "/" : out.substr(0, slash), kPartKind);
  for (int attempt = 0; attempt < 100; ++attempt) {
    const std::string part = dir + arvc_tool::temp_name(base, kPartKind);
    if (part.size() >= sizeof g_part) return ENAMETOOLONG;
    block_exit_signals(SIG_BLOCK);  // the handler sees the path only once it names this run's file
    const int fd = open(part.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0666);
    const int err = errno;
    if (fd >= 0) {
      std::memcpy(g_part, part.c_str(), part.size() + 1);
      g_part_live = true;
    }
    block_exit_signals(SIG_UNBLOCK);
    if (fd < 0 && err == EEXIST) continue;
    if (fd < 0) return err;
    *f = fdopen(fd, "wb");
    if (!*f) return errno;
    return 0;
  }
  return EEXIST;
}

void remove_part() {
  block_exit_signals(SIG_BLOCK);
  if (g_part_live) unlink(g_part);
  g_part_live = false;
  block_exit_signals(SIG_UNBLOCK);
}

// rename the finished file over `out` and fsync the directory, so that a crash leaves the old or the new OUT
int commit_part(const std::string &out) {
  block_exit_signals(SIG_BLOCK);  // a signal between the rename and forgetting the name would delete OUT
  int err = std::rename(g_part, out.c_str()) == 0 ? 0 : errno;
  if (!err) g_part_live = false;
  block_exit_signals(SIG_UNBLOCK);
  if (err) return err;
  const size_t slash = out.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : out.substr(0, slash);
  const int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    if (fsync(fd) != 0 && errno != EINVAL) err = errno;
    close(fd);
  }
  return err;
}

}  // namespace

int main(int argc, char **argv) {
  const char *plan = nullptr, *out = nullptr, *prompt = "a red circle moving right on a dark blue background";
  double seconds = 5.0;
  int64_t frames = -1;
  uint64_t seed = 0;
  bool callback = false;
  arvc_options options = arvc_options_default();
  std::vector<std::pair<double, std::string>> switches;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has1 = i + 1 < argc, has2 = i + 2 < argc;
    int64_t n = 0;
    if (a == "-o" && has1) out = argv[++i];
    else if (a == "--prompt" && has1) prompt = argv[++i];
    else if (a == "--seconds" && has1) {
      ++i;
      if (!parse_finite(argv[i], seconds) || !(seconds > 0 && seconds <= 86400))
        return usage("--seconds " + quoted(argv[i]) + ": give a length in seconds, more than 0 and at most 86400");
    } else if (a == "--frames" && has1) {
      ++i;
      if (!parse_i64(argv[i], frames) || frames < 1)
        return usage("--frames " + quoted(argv[i]) + ": give a whole number of frames, at least 1");
    } else if (a == "--seed" && has1) {
      ++i;
      if (!parse_u64(argv[i], seed))
        return usage("--seed " + quoted(argv[i]) + ": give a whole number in 0..18446744073709551615 (2^64-1)");
    } else if (a == "--threads" && has1) {
      ++i;
      if (!parse_i64(argv[i], n) || n < 0 || n > 256)
        return usage("--threads " + quoted(argv[i]) + ": give a whole number in 0..256 (0: one per physical core)");
      options.threads = static_cast<int32_t>(n);
    } else if (a == "--onnxruntime" && has1) options.onnxruntime_library = argv[++i];
    else if (a == "--switch" && has2) {
      double at = 0;
      if (!parse_finite(argv[i + 1], at) || at < 0)
        return usage("--switch " + quoted(argv[i + 1]) + ": give the switch time in seconds, a finite number >= 0");
      switches.emplace_back(at, argv[i + 2]);
      i += 2;
    } else if (a == "--callback") callback = true;
    else if (a == "--no-prefetch") options.no_prefetch = 1;
    else if (a[0] != '-' && !plan) plan = argv[i];
    else return usage("unexpected argument " + a);
  }
  if (!plan || !out) return usage("give a PLAN and -o OUT");
  const std::string out_s = out;
  const bool y4m = out_s.size() > 4 && out_s.compare(out_s.size() - 4, 4, ".y4m") == 0;
  const bool rgb = out_s.size() > 4 && out_s.compare(out_s.size() - 4, 4, ".rgb") == 0;
  if (!y4m && !rgb) return usage("the output must end in .y4m or .rgb");
  struct stat st_out {};
  if (stat(out, &st_out) == 0 && S_ISDIR(st_out.st_mode)) return usage("-o " + out_s + " is a directory; name a file");

  signal(SIGXFSZ, SIG_IGN);  // past `ulimit -f` a write fails with EFBIG, reported below, instead of killing us
  on_exit_signals(remove_part_and_die);
  block_exit_signals(SIG_BLOCK);
  arvc_session *s = nullptr;
  const int opened = check(arvc_open(plan, &options, &s), "arvc_open");
  block_exit_signals(SIG_UNBLOCK);
  if (opened) return 1;
  arvc_info info{};
  info.size = sizeof info;
  if (check(arvc_get_info(s, &info), "arvc_get_info")) return 1;
  const int64_t max_frames = static_cast<int64_t>(info.fps) * 86400;
  if (frames > max_frames) {
    arvc_close(s);
    return usage("--frames " + std::to_string(frames) + ": at most " + std::to_string(max_frames) + " (86400 s at " +
                 std::to_string(info.fps) + " fps)");
  }
  if (frames < 0) frames = static_cast<int64_t>(std::nearbyint(seconds * info.fps));  // Python's round: half to even
  if (frames < 1) {
    arvc_close(s);
    return usage("a video needs at least one frame");
  }
  const double length = static_cast<double>(frames) / info.fps;
  for (const auto &sw : switches)
    if (sw.first >= length) {
      arvc_close(s);
      char why[200];
      std::snprintf(why, sizeof why, "--switch %g: after the end of the video (%g s); give a time in [0, %g)", sw.first,
                    length, length);
      return usage(why);
    }

  // blocks for the frames, and the block each switch applies before (runtime/plan_session.py block_for_time)
  auto frames_before = [&](int64_t b) -> int64_t {
    const int64_t latents = b * info.latent_frames_per_block;
    return latents == 0 ? 0 : info.first_block_frames + (latents / info.latent_frames_per_block - 1) * info.block_frames;
  };
  int64_t blocks = 0;
  while (frames_before(blocks) < frames) ++blocks;
  std::stable_sort(switches.begin(), switches.end(), [](const auto &a, const auto &b) { return a.first < b.first; });

  Writer w;
  if (const int err = open_part(out_s, &w.f)) {
    remove_part();
    arvc_close(s);
    return write_failed(out_s, err);
  }
  w.y4m = y4m;
  w.width = info.width;
  w.height = info.height;
  w.frames_left = frames;
  if (y4m) {
    char header[128];
    const int n = std::snprintf(header, sizeof header, "YUV4MPEG2 W%d H%d F%d:1 Ip A1:1 C444 XCOLORRANGE=FULL\n",
                                info.width, info.height, info.fps);
    w.put(header, static_cast<size_t>(n));
  }

  int rc = check(arvc_set_prompt(s, prompt, seed), "arvc_set_prompt");
  for (const auto &[at, text] : switches) {
    int64_t block = 0;
    while (frames_before(block) < at * info.fps) ++block;
    if (!rc) rc = check(arvc_switch_prompt(s, text.c_str(), block, nullptr), "arvc_switch_prompt");
  }
  std::vector<uint8_t> buffer(callback ? 0 : info.max_block_bytes);
  for (int64_t b = 0; b < blocks && !rc && !w.error; ++b) {
    int32_t n = 0;
    if (callback) rc = check(arvc_next_block_cb(s, on_frame, &w, &n), "arvc_next_block_cb");
    else {
      rc = check(arvc_next_block(s, buffer.data(), buffer.size(), &n), "arvc_next_block");
      for (int32_t i = 0; i < n && !rc; ++i) w.write(buffer.data() + static_cast<size_t>(i) * info.width * info.height * 3);
    }
  }
  arvc_stats st{};
  st.size = sizeof st;
  if (!rc && !w.error) rc = check(arvc_get_stats(s, &st), "arvc_get_stats");
  char summary[512];  // formatted now: info.precision lives until arvc_close
  std::snprintf(summary, sizeof summary,
                "%lld frames (%dx%d, %s) in %.2f s: first frame %.3f s, %.1f fps; DiT %.2f s in %lld calls, VAE %.2f s -> %s\n",
                static_cast<long long>(frames), info.width, info.height, info.precision, st.wall_s, st.first_frame_s,
                st.frames / st.wall_s, st.dit_s, static_cast<long long>(st.dit_calls), st.vae_s, out);
  arvc_close(s);
  const int err = w.finish();
  if (rc || err) {
    remove_part();
    return rc ? rc : write_failed(out_s, err);
  }
  if (const int e = commit_part(out_s)) {
    remove_part();
    return write_failed(out_s, e);
  }
  std::fputs(summary, stdout);
  return 0;
}
