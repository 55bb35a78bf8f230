// The C API's contract under misuse and in normal use (registered with ctest; tests/test_c_runtime.py
// runs it on the tiny plan):
//   test_capi           the checks that need no plan (NULL handles and pointers, missing or corrupt plan)
//   test_capi PLAN      those, then open PLAN and check wrong sizes, call order, prompts and determinism
// Every misuse must return its status code with a message, never crash, and leave the session usable.
#include <arvc.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

namespace {

int failures = 0;

void expect(bool ok, const std::string &what) {
  if (!ok) {
    std::fprintf(stderr, "FAIL: %s (last error: %s)\n", what.c_str(), arvc_last_error());
    ++failures;
  }
}

// status as expected, with a message that contains `needle`
void expect_status(arvc_status got, arvc_status want, const char *needle, const std::string &what) {
  expect(got == want, what + ": status " + std::to_string(got) + " (" + arvc_status_string(got) + "), expected " + std::to_string(want));
  if (want != ARVC_OK) expect(std::strstr(arvc_last_error(), needle) != nullptr, what + ": message lacks '" + needle + "'");
}

std::string temp_dir() {
  char tmpl[] = "/tmp/arvc-capi-XXXXXX";
  const char *d = mkdtemp(tmpl);
  return d ? d : "";
}

void write_file(const std::string &path, const std::string &text) { std::ofstream(path, std::ios::binary) << text; }

void copy_plan(const std::string &from, const std::string &to) {
  const std::string cmd = "cp -r '" + from + "/.' '" + to + "'";
  expect(std::system(cmd.c_str()) == 0, "copy the plan");
}

void test_without_plan() {
  arvc_session *s = reinterpret_cast<arvc_session *>(0x1);  // must be reset to NULL on failure
  expect_status(arvc_open(nullptr, nullptr, &s), ARVC_ERR_INVALID_ARGUMENT, "plan_dir", "open(NULL)");
  expect(s == nullptr, "open failure sets *out = NULL");
  expect_status(arvc_open("x", nullptr, nullptr), ARVC_ERR_INVALID_ARGUMENT, "out is NULL", "open(out NULL)");
  arvc_options bad = arvc_options_default();
  bad.size = 4;
  expect_status(arvc_open("x", &bad, &s), ARVC_ERR_INVALID_ARGUMENT, "arvc_options_default", "open(options.size 4)");
  bad = arvc_options_default();
  for (const int32_t threads : {-3, 257}) {
    bad.threads = threads;
    expect_status(arvc_open("x", &bad, &s), ARVC_ERR_INVALID_ARGUMENT, "0..256", "open(threads " + std::to_string(threads) + ")");
  }
  expect_status(arvc_open("/nonexistent/plan", nullptr, &s), ARVC_ERR_PLAN, "not an arvc plan", "open(missing plan)");

  const std::string dir = temp_dir();
  write_file(dir + "/manifest.json", "{not json");
  expect_status(arvc_open(dir.c_str(), nullptr, &s), ARVC_ERR_INTEGRITY, "not valid JSON", "open(corrupt manifest)");
  write_file(dir + "/manifest.json", "{\"format\": \"arvc-plan\", \"schema_version\": 99}\n");
  expect_status(arvc_open(dir.c_str(), nullptr, &s), ARVC_ERR_PLAN, "newer than this arvc", "open(future schema)");
  std::system(("rm -rf '" + dir + "'").c_str());

  // every entry point with a NULL session
  arvc_info info{};
  info.size = sizeof info;
  arvc_stats stats{};
  stats.size = sizeof stats;
  uint8_t byte = 0;
  int32_t n = -1;
  int64_t at = -7;
  float emb[4] = {0};
  expect_status(arvc_get_info(nullptr, &info), ARVC_ERR_INVALID_ARGUMENT, "session is NULL", "get_info(NULL)");
  expect_status(arvc_get_stats(nullptr, &stats), ARVC_ERR_INVALID_ARGUMENT, "session is NULL", "get_stats(NULL)");
  expect_status(arvc_set_prompt(nullptr, "a", 0), ARVC_ERR_INVALID_ARGUMENT, "session is NULL", "set_prompt(NULL)");
  expect_status(arvc_set_prompt_embeddings(nullptr, emb, 1, 4, 0), ARVC_ERR_INVALID_ARGUMENT, "session is NULL", "set_prompt_embeddings(NULL)");
  expect_status(arvc_next_block(nullptr, &byte, 1, &n), ARVC_ERR_INVALID_ARGUMENT, "session is NULL", "next_block(NULL)");
  expect_status(arvc_next_block_cb(nullptr, nullptr, nullptr, &n), ARVC_ERR_INVALID_ARGUMENT, "session is NULL", "next_block_cb(NULL)");
  expect_status(arvc_switch_prompt(nullptr, "a", -1, &at), ARVC_ERR_INVALID_ARGUMENT, "session is NULL", "switch_prompt(NULL)");
  expect_status(arvc_switch_prompt_embeddings(nullptr, emb, 1, 4, -1, &at), ARVC_ERR_INVALID_ARGUMENT, "session is NULL", "switch_prompt_embeddings(NULL)");
  arvc_close(nullptr);
  for (int st = ARVC_OK; st <= ARVC_ERR_OUT_OF_MEMORY; ++st)
    expect(std::strcmp(arvc_status_string(static_cast<arvc_status>(st)), "unknown status") != 0, "status string " + std::to_string(st));
  expect(std::strlen(arvc_version()) > 0, "version");
}

struct Collect {
  std::vector<uint8_t> bytes;
  int64_t next_index = 0;
  bool in_order = true;
};

void collect(void *user, const uint8_t *rgb, int64_t index, int32_t w, int32_t h) {
  auto *c = static_cast<Collect *>(user);
  c->in_order = c->in_order && index == c->next_index++;
  c->bytes.insert(c->bytes.end(), rgb, rgb + static_cast<size_t>(w) * h * 3);
}

void test_with_plan(const char *plan) {
  arvc_session *s = nullptr;
  arvc_options opts = arvc_options_default();
  opts.threads = 2;
  opts.onnxruntime_library = "/nonexistent/libonnxruntime.so";  // ONNX Runtime is loaded at the first open
  expect_status(arvc_open(plan, &opts, &s), ARVC_ERR_RUNTIME, "cannot load ONNX Runtime", "open(bad onnxruntime path)");
  opts.onnxruntime_library = nullptr;
  expect_status(arvc_open(plan, &opts, &s), ARVC_OK, "", "open(plan)");
  if (!s) return;

  arvc_info info{};
  info.size = 8;
  expect_status(arvc_get_info(s, &info), ARVC_ERR_INVALID_ARGUMENT, "sizeof(arvc_info)", "get_info(size 8)");
  info.size = sizeof info;
  expect_status(arvc_get_info(s, &info), ARVC_OK, "", "get_info");
  expect(info.width > 0 && info.height > 0 && info.fps > 0, "info: frame size and rate");
  expect(info.first_block_frames == 9 && info.block_frames == 12, "info: 9 frames in block 0, 12 after (3 latent frames, x4)");
  expect(info.max_block_bytes == static_cast<size_t>(12) * info.width * info.height * 3, "info: max_block_bytes");
  expect(info.kv_cache_bytes > 0 && info.vae_state_bytes > 0, "info: memory");
  const size_t frame_bytes = static_cast<size_t>(info.width) * info.height * 3;
  std::vector<uint8_t> buf(info.max_block_bytes);
  int32_t n = -1;

  expect_status(arvc_next_block(s, buf.data(), buf.size(), &n), ARVC_ERR_STATE, "arvc_set_prompt", "next_block before a prompt");
  expect_status(arvc_switch_prompt(s, "a red circle", -1, nullptr), ARVC_ERR_STATE, "arvc_set_prompt", "switch before a stream");
  expect_status(arvc_set_prompt(s, "a purple circle", 1), ARVC_ERR_PROMPT, "vocabulary is", "unknown word");
  expect_status(arvc_set_prompt(s, "   ", 1), ARVC_ERR_PROMPT, "empty prompt", "empty prompt");
  expect_status(arvc_set_prompt(s, nullptr, 1), ARVC_ERR_INVALID_ARGUMENT, "text is NULL", "NULL prompt");
  std::vector<float> emb(static_cast<size_t>(info.text_dim) * 2, 0.1f);
  expect_status(arvc_set_prompt_embeddings(s, emb.data(), 2, info.text_dim + 1, 1), ARVC_ERR_PROMPT, "prompt embeddings must be",
                "embeddings of the wrong width");
  emb[3] = std::nanf("");
  expect_status(arvc_set_prompt_embeddings(s, emb.data(), 2, info.text_dim, 1), ARVC_ERR_PROMPT, "NaN", "NaN embeddings");

  expect_status(arvc_set_prompt(s, "a red circle moving right on a dark blue background", 3), ARVC_OK, "", "set_prompt");
  expect_status(arvc_next_block(s, nullptr, buf.size(), &n), ARVC_ERR_INVALID_ARGUMENT, "rgb is NULL", "next_block(rgb NULL)");
  expect_status(arvc_next_block(s, buf.data(), 9 * frame_bytes - 1, &n), ARVC_ERR_BUFFER_TOO_SMALL, "nothing was generated",
                "next_block(short buffer)");
  expect(n == 0, "short buffer: no frames");
  expect_status(arvc_next_block(s, buf.data(), 9 * frame_bytes, &n), ARVC_OK, "", "block 0 (exact size)");
  expect(n == 9, "block 0 after a refused call is still block 0 with 9 frames");
  const std::vector<uint8_t> block0(buf.begin(), buf.begin() + 9 * frame_bytes);
  expect_status(arvc_next_block(s, buf.data(), 9 * frame_bytes, &n), ARVC_ERR_BUFFER_TOO_SMALL, "needs", "block 1 needs 12 frames");
  int64_t at = -1;
  expect_status(arvc_switch_prompt(s, "a green square", 0, &at), ARVC_ERR_STATE, "already started", "switch for a started block");
  expect_status(arvc_switch_prompt(s, "a green square", -2, &at), ARVC_ERR_INVALID_ARGUMENT, "at_block", "switch at -2");
  expect_status(arvc_switch_prompt(s, "a green square moving left", -1, &at), ARVC_OK, "", "switch asap");
  expect(at == 2, "with prefetch, block 1 started during block 0's decode: the switch applies at block 2, got " + std::to_string(at));
  expect_status(arvc_next_block_cb(s, nullptr, nullptr, &n), ARVC_ERR_INVALID_ARGUMENT, "callback is NULL", "next_block_cb(NULL)");
  Collect c;
  c.next_index = 9;  // frame indices count from the stream's start
  for (int b = 1; b <= 3; ++b) expect_status(arvc_next_block_cb(s, collect, &c, &n), ARVC_OK, "", "blocks 1-3 by callback");
  expect(c.in_order && c.bytes.size() == 36 * frame_bytes, "callback: 36 frames, indices in order");
  arvc_stats st{};
  st.size = sizeof st;
  expect_status(arvc_get_stats(s, &st), ARVC_OK, "", "get_stats");
  expect(st.blocks == 4 && st.frames == 45, "stats: 4 blocks, 45 frames");
  expect(st.first_frame_s > 0 && st.dit_s > 0 && st.vae_s > 0 && st.text_s > 0, "stats: stage times");
  // 4 blocks x 5 calls + the re-cache at block 2 (frames 3-5: the sink 0-2 is kept) = 21, and up to 5
  // more from block 4, which the prefetch has started
  expect(st.dit_calls >= 21 && st.dit_calls <= 26, "stats: 21 DiT calls (+ <= 5 prefetched), got " + std::to_string(st.dit_calls));

  // a new stream with the same seed repeats block 0 exactly; a session without prefetch gives the same
  expect_status(arvc_set_prompt(s, "a red circle moving right on a dark blue background", 3), ARVC_OK, "", "restart");
  expect_status(arvc_next_block(s, buf.data(), buf.size(), &n), ARVC_OK, "", "block 0 again");
  expect(std::memcmp(buf.data(), block0.data(), block0.size()) == 0, "same seed, same frames");
  arvc_session *s2 = nullptr;
  opts.no_prefetch = 1;
  expect_status(arvc_open(plan, &opts, &s2), ARVC_OK, "", "open without prefetch");
  expect_status(arvc_set_prompt(s2, "a red circle moving right on a dark blue background", 4), ARVC_OK, "", "seed 4");
  expect_status(arvc_next_block(s2, buf.data(), buf.size(), &n), ARVC_OK, "", "block 0, seed 4");
  expect(std::memcmp(buf.data(), block0.data(), block0.size()) != 0, "another seed, other frames");
  arvc_close(s2);
  arvc_close(s);

  // a damaged copy of the plan is refused with the file named; skip_verify opens it anyway
  const std::string dir = temp_dir();
  copy_plan(plan, dir);
  {
    std::fstream f(dir + "/vae.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-1, std::ios::end);
    f.put('\x5a');
  }
  opts = arvc_options_default();
  expect_status(arvc_open(dir.c_str(), &opts, &s), ARVC_ERR_INTEGRITY, "vae.safetensors", "open(edited weights)");
  std::remove((dir + "/vae.onnx").c_str());
  expect_status(arvc_open(dir.c_str(), &opts, &s), ARVC_ERR_INTEGRITY, "file is missing", "open(missing graph)");
  {
    std::ifstream in(dir + "/manifest.json");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    text.replace(text.find("\"fps\": 16"), 9, "\"fps\": 17");
    write_file(dir + "/manifest.json", text);
  }
  expect_status(arvc_open(dir.c_str(), &opts, &s), ARVC_ERR_INTEGRITY, "modified after compile", "open(edited manifest)");
  std::system(("rm -rf '" + dir + "'").c_str());
}

}  // namespace

int main(int argc, char **argv) {
  test_without_plan();
  if (argc > 1) test_with_plan(argv[1]);
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("test_capi: all checks passed%s\n", argc > 1 ? " (with plan)" : " (no plan given: plan checks skipped)");
  return 0;
}
