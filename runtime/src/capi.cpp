// The C ABI (runtime/include/arvc.h) over arvc::Stream: argument checks, and every exception turned
// into a status code plus the thread's last-error message. Nothing throws across the C boundary.
#include <cstring>
#include <new>
#include <string>

#include "arvc.h"
#include "error.h"
#include "plan.h"
#include "stream.h"

#ifndef ARVC_VERSION
#define ARVC_VERSION "0.0.0"
#endif

struct arvc_session {
  std::unique_ptr<arvc::Stream> stream;
};

namespace {

thread_local std::string g_last_error;
thread_local std::string g_plan_description;

arvc_status ok() {
  g_last_error.clear();
  return ARVC_OK;
}

arvc_status error(arvc_status s, const std::string &message) {
  g_last_error = message;
  return s;
}

template <class F>
arvc_status guarded(F &&body) {
  try {
    body();
    return ok();
  } catch (const arvc::Error &e) {
    return error(e.status, e.what());
  } catch (const Ort::Exception &e) {
    return error(ARVC_ERR_RUNTIME, std::string("ONNX Runtime failed: ") + e.what());
  } catch (const std::bad_alloc &) {
    return error(ARVC_ERR_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception &e) {
    return error(ARVC_ERR_RUNTIME, e.what());
  } catch (...) {
    return error(ARVC_ERR_RUNTIME, "unknown error");
  }
}

#define ARVC_REQUIRE(cond, message) \
  if (!(cond)) return error(ARVC_ERR_INVALID_ARGUMENT, message)

}  // namespace

extern "C" {

const char *arvc_version(void) { return ARVC_VERSION; }

const char *arvc_status_string(arvc_status status) {
  switch (status) {
    case ARVC_OK: return "ok";
    case ARVC_ERR_INVALID_ARGUMENT: return "invalid argument";
    case ARVC_ERR_PLAN: return "plan error";
    case ARVC_ERR_INTEGRITY: return "plan integrity check failed";
    case ARVC_ERR_PROMPT: return "prompt error";
    case ARVC_ERR_BUFFER_TOO_SMALL: return "buffer too small";
    case ARVC_ERR_STATE: return "call out of order";
    case ARVC_ERR_RUNTIME: return "runtime error";
    case ARVC_ERR_OUT_OF_MEMORY: return "out of memory";
  }
  return "unknown status";
}

const char *arvc_last_error(void) { return g_last_error.c_str(); }

arvc_options arvc_options_default(void) {
  arvc_options o;
  std::memset(&o, 0, sizeof o);
  o.size = sizeof o;
  return o;
}

arvc_status arvc_open(const char *plan_dir, const arvc_options *options, arvc_session **out) {
  ARVC_REQUIRE(out, "arvc_open: out is NULL; pass the address of an arvc_session * to receive the session");
  *out = nullptr;
  ARVC_REQUIRE(plan_dir && *plan_dir, "arvc_open: plan_dir is NULL or empty; pass the directory `arvc compile` wrote");
  ARVC_REQUIRE(!options || options->size >= sizeof(arvc_options),
               "arvc_open: options->size is " + std::to_string(options ? options->size : 0) + ", expected sizeof(arvc_options) = " +
                   std::to_string(sizeof(arvc_options)) + "; initialize options with arvc_options_default()");
  ARVC_REQUIRE(!options || (options->threads >= 0 && options->threads <= 256),
               "arvc_open: options->threads is " + std::to_string(options ? options->threads : 0) +
                   "; pass 0..256 (0 = one per physical core)");
  const arvc_options opts = options ? *options : arvc_options_default();
  return guarded([&] {
    auto s = std::make_unique<arvc_session>();
    s->stream = std::make_unique<arvc::Stream>(plan_dir, opts);
    *out = s.release();
  });
}

void arvc_close(arvc_session *session) { delete session; }

#define ARVC_SESSION(fn) ARVC_REQUIRE(session && session->stream, fn ": session is NULL; open one with arvc_open")

arvc_status arvc_get_info(const arvc_session *session, arvc_info *info) {
  ARVC_SESSION("arvc_get_info");
  ARVC_REQUIRE(info, "arvc_get_info: info is NULL");
  ARVC_REQUIRE(info->size >= sizeof(arvc_info), "arvc_get_info: set info->size = sizeof(arvc_info) before the call");
  return guarded([&] { session->stream->info(*info); });
}

arvc_status arvc_get_stats(const arvc_session *session, arvc_stats *stats) {
  ARVC_SESSION("arvc_get_stats");
  ARVC_REQUIRE(stats, "arvc_get_stats: stats is NULL");
  ARVC_REQUIRE(stats->size >= sizeof(arvc_stats), "arvc_get_stats: set stats->size = sizeof(arvc_stats) before the call");
  return guarded([&] { session->stream->stats(*stats); });
}

arvc_status arvc_set_prompt(arvc_session *session, const char *text, uint64_t seed) {
  ARVC_SESSION("arvc_set_prompt");
  ARVC_REQUIRE(text, "arvc_set_prompt: text is NULL");
  return guarded([&] { session->stream->start(session->stream->context_for_text(text), seed); });
}

arvc_status arvc_set_prompt_embeddings(arvc_session *session, const float *emb, int64_t tokens, int64_t dim, uint64_t seed) {
  ARVC_SESSION("arvc_set_prompt_embeddings");
  ARVC_REQUIRE(emb, "arvc_set_prompt_embeddings: emb is NULL");
  return guarded([&] { session->stream->start(session->stream->context_for_embeddings(emb, tokens, dim), seed); });
}

arvc_status arvc_next_block(arvc_session *session, uint8_t *rgb, size_t capacity, int32_t *frames_out) {
  ARVC_SESSION("arvc_next_block");
  ARVC_REQUIRE(rgb, "arvc_next_block: rgb is NULL; pass a buffer of arvc_info.max_block_bytes bytes");
  if (frames_out) *frames_out = 0;
  return guarded([&] {
    const size_t frame_bytes = static_cast<size_t>(session->stream->plan().width) * session->stream->plan().height * 3;
    const int n = session->stream->next_block(
        [&](const uint8_t *frame, int64_t) {
          std::memcpy(rgb, frame, frame_bytes);
          rgb += frame_bytes;
        },
        capacity, true);
    if (frames_out) *frames_out = n;
  });
}

arvc_status arvc_next_block_cb(arvc_session *session, arvc_frame_callback callback, void *user, int32_t *frames_out) {
  ARVC_SESSION("arvc_next_block_cb");
  ARVC_REQUIRE(callback, "arvc_next_block_cb: callback is NULL");
  if (frames_out) *frames_out = 0;
  return guarded([&] {
    const auto &plan = session->stream->plan();
    const int n = session->stream->next_block(
        [&](const uint8_t *frame, int64_t index) { callback(user, frame, index, plan.width, plan.height); }, 0, false);
    if (frames_out) *frames_out = n;
  });
}

arvc_status arvc_switch_prompt(arvc_session *session, const char *text, int64_t at_block, int64_t *applied_at) {
  ARVC_SESSION("arvc_switch_prompt");
  ARVC_REQUIRE(text, "arvc_switch_prompt: text is NULL");
  ARVC_REQUIRE(at_block >= -1, "arvc_switch_prompt: at_block must be a block index or -1 (the first block not started)");
  return guarded([&] {
    const int64_t b = session->stream->switch_prompt(session->stream->context_for_text(text), at_block);
    if (applied_at) *applied_at = b;
  });
}

arvc_status arvc_switch_prompt_embeddings(arvc_session *session, const float *emb, int64_t tokens, int64_t dim, int64_t at_block,
                                          int64_t *applied_at) {
  ARVC_SESSION("arvc_switch_prompt_embeddings");
  ARVC_REQUIRE(emb, "arvc_switch_prompt_embeddings: emb is NULL");
  ARVC_REQUIRE(at_block >= -1, "arvc_switch_prompt_embeddings: at_block must be a block index or -1 (the first block not started)");
  return guarded([&] {
    const int64_t b = session->stream->switch_prompt(session->stream->context_for_embeddings(emb, tokens, dim), at_block);
    if (applied_at) *applied_at = b;
  });
}

arvc_status arvc_plan_describe(const char *plan_dir, int32_t verify_files, const char **json_out) {
  ARVC_REQUIRE(json_out, "arvc_plan_describe: json_out is NULL; pass the address of a const char * to receive the JSON");
  *json_out = nullptr;
  ARVC_REQUIRE(plan_dir && *plan_dir, "arvc_plan_describe: plan_dir is NULL or empty; pass the directory `arvc compile` wrote");
  return guarded([&] {
    g_plan_description = arvc::describe_plan(arvc::read_plan(plan_dir, verify_files != 0));
    *json_out = g_plan_description.c_str();
  });
}

}  // extern "C"
