// Stream a compiled arvc plan to a video file through the C API (runtime/include/arvc.h).
//
//   arvc_stream PLAN -o out.y4m [--prompt TEXT] [--seconds S | --frames N] [--seed N] [--threads N]
//               [--switch SECONDS TEXT]... [--callback] [--no-prefetch] [--onnxruntime LIBONNXRUNTIME.so]
//
// out.y4m: YUV4MPEG2, 4:4:4, full-range BT.601 (plays in ffplay/mpv, converts with ffmpeg); out.rgb: raw
// RGB24 frames (ffmpeg -f rawvideo -pix_fmt rgb24 -s WxH). The frames equal Python's
// arvc.load(PLAN, threads=N).stream(TEXT, frames=..., seed=N, switches=[(SECONDS, TEXT)]) byte for byte.
#include <arvc.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace {

struct Writer {
  FILE *f = nullptr;
  bool y4m = false;
  int width = 0, height = 0;
  int64_t frames_left = 0;
  std::vector<uint8_t> planes;

  // RGB -> full-range BT.601 YCbCr in 16-bit fixed point (JPEG's constants), rounded to nearest
  void write(const uint8_t *rgb) {
    if (frames_left <= 0) return;
    --frames_left;
    const size_t n = static_cast<size_t>(width) * height;
    if (!y4m) {
      std::fwrite(rgb, 1, n * 3, f);
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
    std::fputs("FRAME\n", f);
    std::fwrite(planes.data(), 1, planes.size(), f);
  }
};

void on_frame(void *user, const uint8_t *rgb, int64_t, int32_t, int32_t) { static_cast<Writer *>(user)->write(rgb); }

int usage(const char *why) {
  std::fprintf(stderr,
               "arvc_stream: %s\nusage: arvc_stream PLAN -o OUT.y4m|OUT.rgb [--prompt TEXT] [--seconds S | --frames N] [--seed N] "
               "[--threads N] [--switch SECONDS TEXT]... [--callback] [--no-prefetch] [--onnxruntime LIB]\n",
               why);
  return 2;
}

int check(arvc_status s, const char *what) {
  if (s == ARVC_OK) return 0;
  std::fprintf(stderr, "arvc_stream: %s failed (%s): %s\n", what, arvc_status_string(s), arvc_last_error());
  return 1;
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
    if (a == "-o" && has1) out = argv[++i];
    else if (a == "--prompt" && has1) prompt = argv[++i];
    else if (a == "--seconds" && has1) seconds = std::atof(argv[++i]);
    else if (a == "--frames" && has1) frames = std::atoll(argv[++i]);
    else if (a == "--seed" && has1) seed = std::strtoull(argv[++i], nullptr, 10);
    else if (a == "--threads" && has1) options.threads = std::atoi(argv[++i]);
    else if (a == "--onnxruntime" && has1) options.onnxruntime_library = argv[++i];
    else if (a == "--switch" && has2) {
      switches.emplace_back(std::atof(argv[i + 1]), argv[i + 2]);
      i += 2;
    } else if (a == "--callback") callback = true;
    else if (a == "--no-prefetch") options.no_prefetch = 1;
    else if (a[0] != '-' && !plan) plan = argv[i];
    else return usage(("unexpected argument " + a).c_str());
  }
  if (!plan || !out) return usage("give a PLAN and -o OUT");
  const std::string out_s = out;
  const bool y4m = out_s.size() > 4 && out_s.compare(out_s.size() - 4, 4, ".y4m") == 0;
  const bool rgb = out_s.size() > 4 && out_s.compare(out_s.size() - 4, 4, ".rgb") == 0;
  if (!y4m && !rgb) return usage("the output must end in .y4m or .rgb");

  arvc_session *s = nullptr;
  if (check(arvc_open(plan, &options, &s), "arvc_open")) return 1;
  arvc_info info{};
  info.size = sizeof info;
  if (check(arvc_get_info(s, &info), "arvc_get_info")) return 1;
  if (frames < 0) frames = static_cast<int64_t>(std::nearbyint(seconds * info.fps));  // Python's round: half to even
  if (frames < 1) return usage("a video needs at least one frame");

  // blocks for the frames, and the block each switch applies before (runtime/plan_session.py block_for_time)
  auto frames_before = [&](int64_t b) -> int64_t {
    const int64_t latents = b * info.latent_frames_per_block;
    return latents == 0 ? 0 : info.first_block_frames + (latents / info.latent_frames_per_block - 1) * info.block_frames;
  };
  int64_t blocks = 0;
  while (frames_before(blocks) < frames) ++blocks;
  std::stable_sort(switches.begin(), switches.end(), [](const auto &a, const auto &b) { return a.first < b.first; });

  Writer w;
  const std::string part = out_s + ".part";  // renamed to OUT once complete: never a half-written video
  w.f = std::fopen(part.c_str(), "wb");
  if (!w.f) {
    std::perror(part.c_str());
    return 1;
  }
  w.y4m = y4m;
  w.width = info.width;
  w.height = info.height;
  w.frames_left = frames;
  if (y4m) std::fprintf(w.f, "YUV4MPEG2 W%d H%d F%d:1 Ip A1:1 C444 XCOLORRANGE=FULL\n", info.width, info.height, info.fps);

  int rc = check(arvc_set_prompt(s, prompt, seed), "arvc_set_prompt");
  for (const auto &[at, text] : switches) {
    int64_t block = 0;
    while (frames_before(block) < at * info.fps) ++block;
    if (!rc) rc = check(arvc_switch_prompt(s, text.c_str(), block, nullptr), "arvc_switch_prompt");
  }
  std::vector<uint8_t> buffer(callback ? 0 : info.max_block_bytes);
  for (int64_t b = 0; b < blocks && !rc; ++b) {
    int32_t n = 0;
    if (callback) rc = check(arvc_next_block_cb(s, on_frame, &w, &n), "arvc_next_block_cb");
    else {
      rc = check(arvc_next_block(s, buffer.data(), buffer.size(), &n), "arvc_next_block");
      for (int32_t i = 0; i < n && !rc; ++i) w.write(buffer.data() + static_cast<size_t>(i) * info.width * info.height * 3);
    }
  }
  arvc_stats st{};
  st.size = sizeof st;
  if (!rc && !check(arvc_get_stats(s, &st), "arvc_get_stats"))
    std::printf("%lld frames (%dx%d, %s) in %.2f s: first frame %.3f s, %.1f fps; DiT %.2f s in %lld calls, VAE %.2f s -> %s\n",
                static_cast<long long>(frames), info.width, info.height, info.precision, st.wall_s, st.first_frame_s,
                st.frames / st.wall_s, st.dit_s, static_cast<long long>(st.dit_calls), st.vae_s, out);
  arvc_close(s);
  if (std::fclose(w.f) != 0 || rc || std::rename(part.c_str(), out) != 0) {
    std::remove(part.c_str());
    return rc ? rc : 1;
  }
  return 0;
}
