#include "ort_stages.h"

#include <dlfcn.h>
#include <glob.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

#include "error.h"
#include "plan_graphs.h"

#ifndef ARVC_DEFAULT_ONNXRUNTIME_LIB
#define ARVC_DEFAULT_ONNXRUNTIME_LIB ""
#endif

namespace arvc {
namespace {

std::mutex g_ort_mutex;
std::unique_ptr<Ort::Env> g_env;

size_t element_size(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return 4;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return 8;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return 2;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL: case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return 1;
    default: fail(ARVC_ERR_PLAN, "a plan graph has a tensor of element type " + std::to_string(t) + ", which the C runtime does not bind; recompile the plan with this arvc");
  }
}

Buffer make_buffer(int onnx_type, std::vector<int64_t> shape, const std::string &what) {
  const auto type = static_cast<ONNXTensorElementDataType>(onnx_type);
  Buffer b;
  b.type = type;
  b.shape = std::move(shape);
  for (int64_t d : b.shape)
    if (d <= 0) fail(ARVC_ERR_PLAN, what + " has a dynamic or empty shape; the C runtime needs a plan's static shapes, recompile the plan");
  b.bytes = buffer_size({b.elements(), element_size(type)}, what);
  const size_t padded = buffer_size({b.bytes / 64 + 1, 64}, what);  // whole cache lines, at least one
  void *p = std::aligned_alloc(64, padded);
  if (!p) fail(ARVC_ERR_OUT_OF_MEMORY, "cannot allocate " + std::to_string(b.bytes) + " bytes for " + what);
  std::memset(p, 0, padded);
  b.data.reset(static_cast<uint8_t *>(p), std::free);
  static const Ort::MemoryInfo cpu = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  b.value = Ort::Value::CreateTensor(cpu, p, b.bytes, b.shape.data(), b.shape.size(), type);
  return b;
}

std::vector<TensorSpec> graph_io(Ort::Session &s, bool inputs) {
  Ort::AllocatorWithDefaultOptions alloc;
  std::vector<TensorSpec> out;
  const size_t n = inputs ? s.GetInputCount() : s.GetOutputCount();
  for (size_t i = 0; i < n; ++i) {
    auto name = inputs ? s.GetInputNameAllocated(i, alloc) : s.GetOutputNameAllocated(i, alloc);
    auto info = inputs ? s.GetInputTypeInfo(i) : s.GetOutputTypeInfo(i);
    auto ts = info.GetTensorTypeAndShapeInfo();
    out.push_back({name.get(), static_cast<int>(ts.GetElementType()), ts.GetShape()});
  }
  return out;
}

const TensorSpec &find_io(const std::vector<TensorSpec> &ios, const std::string &name, const std::string &graph) {
  for (const auto &io : ios)
    if (io.name == name) return io;
  fail(ARVC_ERR_PLAN, graph + " has no tensor '" + name + "'; the plan was written by another arvc version, recompile it");
}

// What ONNX Runtime made of the graph must be what its file declared (read_plan compared that with the manifest).
void check_graph(Ort::Session &s, const GraphSpec &want, const std::string &graph) {
  check_declared(graph_io(s, true), want.inputs, graph, "input");
  check_declared(graph_io(s, false), want.outputs, graph, "output");
}

}  // namespace

size_t Buffer::elements() const {
  size_t n = 1;
  for (const int64_t d : shape) n = buffer_size({n, static_cast<size_t>(d)}, "a tensor");  // make_buffer refused d <= 0
  return n;
}

void load_onnxruntime(const char *library_path) {
  std::lock_guard<std::mutex> lock(g_ort_mutex);
  if (g_env) return;  // one ONNX Runtime per process: the first session's
  std::vector<std::string> candidates;
  if (library_path && *library_path) candidates.push_back(library_path);
  else {
    if (const char *env = std::getenv("ARVC_ONNXRUNTIME_LIB"); env && *env) candidates.push_back(env);
    if (*ARVC_DEFAULT_ONNXRUNTIME_LIB) candidates.push_back(ARVC_DEFAULT_ONNXRUNTIME_LIB);
    // installed from the wheel: site-packages/arvc/runtime/lib/libarvc.so beside site-packages/onnxruntime
    Dl_info self{};
    if (dladdr(reinterpret_cast<void *>(&load_onnxruntime), &self) && self.dli_fname) {
      std::string dir = self.dli_fname;
      dir = dir.substr(0, dir.rfind('/') + 1) + "../../../onnxruntime/capi/";
      glob_t g{};
      if (glob((dir + "libonnxruntime.so*").c_str(), 0, nullptr, &g) == 0 && g.gl_pathc) candidates.push_back(g.gl_pathv[0]);
      globfree(&g);
    }
    candidates.push_back("libonnxruntime.so.1");
  }
  std::string tried;
  void *handle = nullptr;
  for (const auto &c : candidates) {
    handle = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle) break;
    tried += "\n  " + c + ": " + dlerror();
  }
  if (!handle)
    fail(ARVC_ERR_RUNTIME, "cannot load ONNX Runtime:" + tried + "\ninstall it (pip install onnxruntime, or apt install libonnxruntime1.21) and "
                           "pass its libonnxruntime.so in arvc_options.onnxruntime_library or ARVC_ONNXRUNTIME_LIB");
  using GetApiBase = const OrtApiBase *(*)();
  auto get_base = reinterpret_cast<GetApiBase>(dlsym(handle, "OrtGetApiBase"));
  const OrtApi *api = get_base ? get_base()->GetApi(ORT_API_VERSION) : nullptr;
  if (!api)
    fail(ARVC_ERR_RUNTIME, std::string("the loaded ONNX Runtime (") + (get_base ? get_base()->GetVersionString() : "no OrtGetApiBase") +
                               ") does not provide API version " + std::to_string(ORT_API_VERSION) + "; use ONNX Runtime 1.21 or newer");
  Ort::InitApi(api);
  g_env = std::make_unique<Ort::Env>(ORT_LOGGING_LEVEL_ERROR, "arvc");
}

OrtStages::OrtStages(const Plan &plan, int threads) {
  options_.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
  options_.SetExecutionMode(ExecutionMode::ORT_SEQUENTIAL);
  options_.SetIntraOpNumThreads(threads);
  options_.SetInterOpNumThreads(1);
  // DiT and VAE sessions run at the same time; spinning threads would steal each other's cores
  options_.AddConfigEntry("session.intra_op.allow_spinning", "0");
  // rewrites that would keep ORT from running W8A8 linears as integer GEMMs (runtime/ort_backend.py says which)
  options_.AddConfigEntry("optimization.disable_specified_optimizers", "MatMulAddFusion;CommonSubexpressionElimination");
  options_.SetLogSeverityLevel(3);
  auto open = [&](const std::string &path) { return std::make_unique<Ort::Session>(*g_env, path.c_str(), options_); };
  text_ = open(plan.text_graph);
  dit_ = open(plan.dit_graph);
  vae_first_ = open(plan.vae_first_graph);
  vae_ = open(plan.vae_graph);
  if (!plan.text_encoder_graph.empty()) text_encoder_ = open(plan.text_encoder_graph);
  // every graph matches the manifest before a buffer is sized by it
  check_graph(*text_, expected_graph(plan, Stage::text), plan.text_graph);
  check_graph(*dit_, expected_graph(plan, Stage::dit), plan.dit_graph);
  check_graph(*vae_first_, expected_graph(plan, Stage::vae_first), plan.vae_first_graph);
  check_graph(*vae_, expected_graph(plan, Stage::vae), plan.vae_graph);
  if (text_encoder_) check_graph(*text_encoder_, expected_graph(plan, Stage::text_encoder), plan.text_encoder_graph);

  // dit: cache buffers in place (input X and output X_out share one buffer), the rest preallocated
  dit_binding_ = std::make_unique<Ort::IoBinding>(*dit_);
  const auto ins = graph_io(*dit_, true), outs = graph_io(*dit_, false);
  std::map<std::string, bool> is_cache;
  for (const auto &o : outs) {
    const auto cut = o.name.rfind("_out_");
    if (cut == std::string::npos) continue;
    const std::string in = o.name.substr(0, cut) + o.name.substr(cut + 4);
    const TensorSpec &io = find_io(ins, in, plan.dit_graph);
    kv_.push_back(make_buffer(io.type, io.shape, in));
    dit_binding_->BindInput(in.c_str(), kv_.back().value);
    dit_binding_->BindOutput(o.name.c_str(), kv_.back().value);
    is_cache[in] = true;
  }
  for (const auto &io : ins) {
    if (is_cache.count(io.name) || io.name.rfind("cross_", 0) == 0) continue;  // cross K/V: bind_cross
    dit_inputs_.emplace_back(io.name, make_buffer(io.type, io.shape, io.name));
    dit_binding_->BindInput(io.name.c_str(), dit_inputs_.back().second.value);
  }
  const TensorSpec &x0 = find_io(outs, "x0", plan.dit_graph);
  x0_ = make_buffer(x0.type, x0.shape, "x0");
  dit_binding_->BindOutput("x0", x0_.value);
  dit_frames_ = static_cast<int>(dit_input("latents").shape.at(2));

  // VAE: two state sets; call n reads set n % 2 and writes the other
  const auto vae_ins = graph_io(*vae_, true);
  std::vector<TensorSpec> state;
  for (const auto &io : vae_ins)
    if (io.name.rfind("state_", 0) == 0) state.push_back(io);
  for (auto &set : vae_state_)
    for (const auto &io : state) set.push_back(make_buffer(io.type, io.shape, io.name));
  const TensorSpec &lat = find_io(vae_ins, "latent", plan.vae_graph);
  latent_ = make_buffer(lat.type, lat.shape, "latent");
  for (int first = 0; first < 2; ++first) {
    Ort::Session &s = first ? *vae_first_ : *vae_;
    const auto outs_vae = graph_io(s, false);
    const TensorSpec &px = find_io(outs_vae, "pixels", first ? plan.vae_first_graph : plan.vae_graph);
    pixels_[first] = make_buffer(px.type, px.shape, "pixels");
    for (int parity = 0; parity < 2; ++parity) {
      auto b = std::make_unique<Ort::IoBinding>(s);
      b->BindInput("latent", latent_.value);
      for (size_t j = 0; j < state.size(); ++j) {
        b->BindInput(("state_" + std::to_string(j)).c_str(), vae_state_[parity][j].value);
        b->BindOutput(("state_out_" + std::to_string(j)).c_str(), vae_state_[1 - parity][j].value);
      }
      b->BindOutput("pixels", pixels_[first].value);
      vae_bindings_[first][parity] = std::move(b);
    }
  }
}

std::vector<float> OrtStages::encode_text(const std::vector<int64_t> &ids, int64_t length) {
  if (!text_encoder_) fail(ARVC_ERR_PROMPT, "this plan has no text encoder stage; pass prompt embeddings instead of text");
  static const Ort::MemoryInfo cpu = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  const int64_t ids_shape[2] = {1, static_cast<int64_t>(ids.size())}, len_shape[1] = {1};
  Ort::Value in[2] = {
      Ort::Value::CreateTensor<int64_t>(cpu, const_cast<int64_t *>(ids.data()), ids.size(), ids_shape, 2),
      Ort::Value::CreateTensor<int64_t>(cpu, &length, 1, len_shape, 1)};
  const char *in_names[2] = {"ids", "length"}, *out_names[1] = {"context"};
  auto out = text_encoder_->Run(Ort::RunOptions{nullptr}, in_names, in, 2, out_names, 1);
  const float *p = out[0].GetTensorData<float>();
  return std::vector<float>(p, p + out[0].GetTensorTypeAndShapeInfo().GetElementCount());
}

CrossKV OrtStages::cross_kv(const std::vector<float> &context) {
  static const Ort::MemoryInfo cpu = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  const auto ins = graph_io(*text_, true);
  const TensorSpec &ctx = find_io(ins, "context", "text graph");
  Ort::Value in = Ort::Value::CreateTensor<float>(cpu, const_cast<float *>(context.data()), context.size(), ctx.shape.data(), ctx.shape.size());
  CrossKV kv;
  for (const auto &o : graph_io(*text_, false)) kv.names.push_back(o.name);
  std::vector<const char *> out_names;
  for (const auto &n : kv.names) out_names.push_back(n.c_str());
  const char *in_names[1] = {"context"};
  kv.values = text_->Run(Ort::RunOptions{nullptr}, in_names, &in, 1, out_names.data(), out_names.size());
  return kv;
}

void OrtStages::bind_cross(const CrossKV &kv) {
  for (size_t i = 0; i < kv.names.size(); ++i) dit_binding_->BindInput(kv.names[i].c_str(), kv.values[i]);
}

bool OrtStages::dit_has_input(const std::string &name) const {
  for (const auto &[n, b] : dit_inputs_)
    if (n == name) return true;
  return false;
}

Buffer &OrtStages::dit_input(const std::string &name) {
  for (auto &[n, b] : dit_inputs_)
    if (n == name) return b;
  fail(ARVC_ERR_PLAN, "the dit graph has no input '" + name + "'; recompile the plan with this arvc");
}

const float *OrtStages::run_dit() {
  dit_->Run(Ort::RunOptions{nullptr}, *dit_binding_);
  return x0_.as<float>();
}

void OrtStages::reset_vae() {
  for (auto &set : vae_state_)
    for (auto &b : set) std::memset(b.data.get(), 0, b.bytes);
  vae_parity_ = 0;
}

const float *OrtStages::run_vae(const float *latent, bool first, int *frames_out) {
  std::memcpy(latent_.data.get(), latent, latent_.bytes);
  Ort::Session &s = first ? *vae_first_ : *vae_;
  s.Run(Ort::RunOptions{nullptr}, *vae_bindings_[first][vae_parity_]);
  vae_parity_ = 1 - vae_parity_;
  *frames_out = static_cast<int>(pixels_[first].shape.at(2));
  return pixels_[first].as<float>();
}

size_t OrtStages::kv_cache_bytes() const {
  size_t n = 0;
  for (const auto &b : kv_) n += b.bytes;
  return n;
}

size_t OrtStages::vae_state_bytes() const {
  size_t n = 0;
  for (const auto &set : vae_state_)
    for (const auto &b : set) n += b.bytes;
  return n;
}

}  // namespace arvc
