/* arvc C API: stream video from a compiled arvc plan (`arvc compile ... -o PLAN`) in a C or C++ program.
 *
 * The same runtime as Python's arvc.load(PLAN).stream(...): the plan's ONNX graphs on ONNX Runtime
 * (CPU), the KV cache and VAE state preallocated and updated in place, the DiT of the next block
 * computed on a worker thread while the caller's thread decodes the current one with the VAE. For the
 * same plan, prompt, seed and thread count the frames equal Python's byte for byte (the seeded noise
 * is runtime/include/arvc_noise.h, the twin of arvc/model/noise.py).
 *
 *   arvc_session *s = NULL;
 *   if (arvc_open("tiny.plan", NULL, &s) != ARVC_OK) { fprintf(stderr, "%s\n", arvc_last_error()); ... }
 *   arvc_info info = {sizeof info};
 *   arvc_get_info(s, &info);
 *   uint8_t *rgb = malloc(info.max_block_bytes);
 *   arvc_set_prompt(s, "a red circle moving right on a dark blue background", 42);
 *   for (int b = 0; b < 10; ++b) {
 *     int32_t n = 0;
 *     if (arvc_next_block(s, rgb, info.max_block_bytes, &n) != ARVC_OK) { ... }
 *     ... n frames of info.height x info.width RGB, row-major, 3 bytes per pixel ...
 *   }
 *   arvc_close(s);
 *
 * Errors: every function returns an arvc_status; on failure arvc_last_error() (per thread) says what
 * went wrong and how to fix it. A failed call changes nothing, except where its documentation says
 * so. NULL handles, NULL or short buffers, a missing or corrupted plan and calls in the wrong order are
 * reported, never undefined behaviour. A session may be used from any thread, one call at a time.
 *
 * ONNX Runtime is loaded when the first session opens (dlopen): from arvc_options.onnxruntime_library,
 * else the environment variable ARVC_ONNXRUNTIME_LIB, else the library the build found (the
 * onnxruntime Python wheel's), else "libonnxruntime.so.1" on the loader's search path. Its API must be
 * version 21 (ONNX Runtime 1.21) or newer.
 */
#ifndef ARVC_H
#define ARVC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define ARVC_API __attribute__((visibility("default")))
#else
#define ARVC_API
#endif

typedef enum arvc_status {
  ARVC_OK = 0,
  ARVC_ERR_INVALID_ARGUMENT = 1, /* NULL handle or pointer, bad value, struct size too small */
  ARVC_ERR_PLAN = 2,             /* no plan there, unreadable or unsupported manifest */
  ARVC_ERR_INTEGRITY = 3,        /* a plan file does not match its checksum: recompile the plan */
  ARVC_ERR_PROMPT = 4,           /* unknown word, too long, wrong embedding shape, NaN */
  ARVC_ERR_BUFFER_TOO_SMALL = 5, /* the caller's buffer cannot hold the block: nothing was generated */
  ARVC_ERR_STATE = 6,            /* call out of order (no prompt yet, switch for a block already started) */
  ARVC_ERR_RUNTIME = 7,          /* ONNX Runtime missing or failed; the stream must be restarted */
  ARVC_ERR_OUT_OF_MEMORY = 8
} arvc_status;

typedef struct arvc_session arvc_session; /* opaque */

/* Set .size = sizeof(arvc_options) (arvc_options_default() does); zero fields take the defaults. */
typedef struct arvc_options {
  uint32_t size;
  int32_t threads;                 /* ONNX Runtime intra-op threads per stage, 0..256; 0 = one per physical core */
  int32_t skip_verify;             /* 1: skip the SHA-256 check of the plan's files at open */
  int32_t no_prefetch;             /* 1: compute each block's DiT inside arvc_next_block (no worker thread) */
  const char *onnxruntime_library; /* path of libonnxruntime.so; NULL = the search order above */
} arvc_options;

typedef struct arvc_info {
  uint32_t size;              /* set by the caller: sizeof(arvc_info) */
  int32_t width, height, fps; /* video frames */
  int32_t latent_frames_per_block;
  int32_t first_block_frames; /* video frames of block 0 (the VAE's first latent frame makes one) */
  int32_t block_frames;       /* video frames of every later block */
  size_t max_block_bytes;     /* RGB bytes of the largest block: a buffer this big fits every block */
  int32_t window, sink;       /* KV cache geometry, in latent frames (window 0: global attention) */
  int32_t max_blocks;         /* blocks a stream can hold; 0 = unbounded (rolling window, relative RoPE) */
  int32_t has_text_encoder;   /* 1: prompts are text; 0: prompts are embeddings [tokens, text_dim] */
  int32_t text_dim, text_len;
  size_t kv_cache_bytes, vae_state_bytes;
  const char *precision;      /* the plan's recipe name; valid until arvc_close */
} arvc_info;

typedef struct arvc_stats {
  uint32_t size; /* set by the caller: sizeof(arvc_stats) */
  int64_t blocks, frames;
  double wall_s;        /* since the stream started (arvc_set_prompt) */
  double first_frame_s; /* time to the first frame; -1 before it */
  double text_s, dit_s, vae_s;
  int64_t dit_calls;
  double last_block_s;  /* DiT seconds of the last block */
} arvc_stats;

/* Called once per decoded frame, in order, on the thread that called arvc_next_block_cb. rgb holds
 * height x width x 3 bytes and is valid only during the call. */
typedef void (*arvc_frame_callback)(void *user, const uint8_t *rgb, int64_t frame_index, int32_t width,
                                    int32_t height);

ARVC_API const char *arvc_version(void);
ARVC_API const char *arvc_status_string(arvc_status status);
/* Message of the last failed call on this thread ("" if none); valid until the next arvc call. */
ARVC_API const char *arvc_last_error(void);
ARVC_API arvc_options arvc_options_default(void);

/* Open a plan directory. A plan is untrusted input (docs/plan-validation.md): the manifest's fields and their
 * relations, that the folder holds exactly manifest.json and the files it lists, unless skip_verify each
 * file's size and SHA-256, and that every graph's inputs and outputs are the ones the manifest makes, are
 * checked before anything is sized by the plan. options may be NULL. On failure *out is set to NULL. */
ARVC_API arvc_status arvc_open(const char *plan_dir, const arvc_options *options, arvc_session **out);
/* Frees everything; waits for a DiT block in flight. NULL is accepted and ignored. */
ARVC_API void arvc_close(arvc_session *session);

ARVC_API arvc_status arvc_get_info(const arvc_session *session, arvc_info *info);
ARVC_API arvc_status arvc_get_stats(const arvc_session *session, arvc_stats *stats);

/* Start a new stream (from block 0, empty cache) with a text prompt (plans with a text encoder: words of
 * the plan's vocabulary) or prompt embeddings emb[tokens * dim] (row-major float32, dim = text_dim,
 * tokens <= text_len), and the noise seed. Any stream in progress is dropped (after the DiT block in
 * flight, if any, finishes). */
ARVC_API arvc_status arvc_set_prompt(arvc_session *session, const char *text, uint64_t seed);
ARVC_API arvc_status arvc_set_prompt_embeddings(arvc_session *session, const float *emb, int64_t tokens,
                                                int64_t dim, uint64_t seed);

/* Generate the next block and write its frames to rgb as [n][height][width][3] uint8, n = *frames_out
 * (first_block_frames for block 0, block_frames after). capacity: bytes available at rgb; if it cannot
 * hold the block, ARVC_ERR_BUFFER_TOO_SMALL and nothing is generated. */
ARVC_API arvc_status arvc_next_block(arvc_session *session, uint8_t *rgb, size_t capacity, int32_t *frames_out);
/* The same, handing each frame to callback as soon as it is decoded (lower latency, no block buffer). */
ARVC_API arvc_status arvc_next_block_cb(arvc_session *session, arvc_frame_callback callback, void *user,
                                        int32_t *frames_out);

/* Switch prompts mid-stream (LongLive KV re-cache: the cached frames are re-run under the new prompt).
 * at_block: the block before which the switch applies; -1 = the first block whose DiT has not started
 * (with prefetch on, arvc_next_block for block b starts block b + 1). A block that already started is
 * ARVC_ERR_STATE. *applied_at (may be NULL) receives the block. */
ARVC_API arvc_status arvc_switch_prompt(arvc_session *session, const char *text, int64_t at_block,
                                        int64_t *applied_at);
ARVC_API arvc_status arvc_switch_prompt_embeddings(arvc_session *session, const float *emb, int64_t tokens,
                                                   int64_t dim, int64_t at_block, int64_t *applied_at);

/* The plan at plan_dir as this runtime reads it, as UTF-8 JSON: the manifest fields it uses and what it
 * derives from them (the KV cache's buffers, ...), for tools and for the test that holds this reader to
 * the Python one (runtime/manifest.py). The plan is checked as arvc_open checks it, but for the graphs'
 * shapes (arvc_open loads the graphs); every file's size and SHA-256 only when verify_files is nonzero.
 * *json_out is valid until the next arvc_plan_describe on this thread. */
ARVC_API arvc_status arvc_plan_describe(const char *plan_dir, int32_t verify_files, const char **json_out);

#ifdef __cplusplus
}
#endif

#endif /* ARVC_H */
