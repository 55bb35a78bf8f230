/* TensorRT IPluginV3 plugins over the arvc CUDA cache kernels (csrc/arvc_kernels.h). Thin by design: shapes,
 * types and attributes are checked here; the arithmetic is the kernels'. The ops are those
 * arvc/graphs/lower_plugin.py writes into dit_trt.onnx (domain "arvc"); the ONNX parser finds them in the plugin
 * registry by op type, the node's plugin_version ("1") and plugin_namespace ("arvc") attributes, and passes the
 * node's other attributes as PluginFields.
 *
 *   KVCacheWrite     in: x [N, dim] f32, row_index [N] i32, cache parts (cache, [block_scale], [scale])
 *                    out: the cache parts, output j aliased to input 2 + j (in place)
 *                    -> arvc_kv_cache_write_cuda(..., ARVC_FLAG_NO_HOST_SYNC, stream)
 *   AttentionQCache  in: q [.., dim] f32, K parts, V parts, key_valid [Nk] u8, (rope_k_cos, rope_k_sin [.., Nk, Dh/2])
 *                    out: [q's shape] f32
 *                    -> arvc_attention_qcache_cuda(..., n_new = 0, ARVC_FLAG_NO_HOST_SYNC, stream)
 *
 * Attributes: format (arvc_kv_format), heads, head_dim; AttentionQCache also softmax_scale and rope_k (0/1).
 * The library exports getCreators + setLoggerFinder for IPluginRegistry::loadLibrary (Python:
 * trt.get_plugin_registry().load_library(path)), and arvc_trt_register_creators() for loaders that dlopen it.
 */
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "arvc_kernels.h"

using namespace nvinfer1;

namespace {

constexpr char const *kNamespace = "arvc";
constexpr char const *kVersion = "1";
constexpr char const *kWriteName = "KVCacheWrite";
constexpr char const *kAttentionName = "AttentionQCache";

ILogger *g_logger = nullptr;

void log_error(std::string const &msg) {
    if (g_logger) g_logger->log(ILogger::Severity::kERROR, ("arvc plugin: " + msg).c_str());
}

struct Attrs {
    int32_t format = 0, heads = 0, head_dim = 0, rope_k = 0;
    float softmax_scale = 0.f;

    int32_t dim() const { return heads * head_dim; }
    /* parts of one cache in quant/kv.py order: cache, [block_scale], [scale] */
    int32_t parts() const { return format == ARVC_KV_FP16 ? 1 : format == ARVC_KV_NVFP4 ? 3 : 2; }
    bool valid() const {
        if (format < ARVC_KV_FP16 || format > ARVC_KV_NVFP4 || heads <= 0 || head_dim <= 0) return false;
        return format != ARVC_KV_NVFP4 || head_dim % 16 == 0;
    }
    DataType part_type(int32_t part) const {
        if (part == parts() - 1 && format != ARVC_KV_FP16) return DataType::kFLOAT;  // per-token-per-head scale
        if (part == 1) return DataType::kUINT8;                                      // nvfp4 block scales (E4M3)
        return format == ARVC_KV_FP16 ? DataType::kHALF : format == ARVC_KV_INT8 ? DataType::kINT8 : DataType::kUINT8;
    }
    /* the kernel's view of one cache, from the (device) part pointers */
    arvc_kv_cache cache(void *const *p, int32_t rows) const {
        arvc_kv_cache c{};
        c.format = format;
        c.heads = heads;
        c.head_dim = head_dim;
        c.rows = rows;
        c.data = p[0];
        c.block_scale = format == ARVC_KV_NVFP4 ? static_cast<uint8_t *>(p[1]) : nullptr;
        c.scale = format == ARVC_KV_FP16 ? nullptr : static_cast<float *>(p[parts() - 1]);
        return c;
    }
};

int64_t volume(Dims const &d) {
    int64_t v = 1;
    for (int32_t i = 0; i < d.nbDims; ++i) v *= d.d[i];
    return v;
}

bool read_int(PluginField const &f, int32_t &out) {
    if (f.data == nullptr || f.length < 1) return false;
    if (f.type == PluginFieldType::kINT32) out = *static_cast<int32_t const *>(f.data);
    else if (f.type == PluginFieldType::kINT64) out = static_cast<int32_t>(*static_cast<int64_t const *>(f.data));
    else return false;
    return true;
}

bool read_float(PluginField const &f, float &out) {
    if (f.data == nullptr || f.length < 1) return false;
    if (f.type == PluginFieldType::kFLOAT32) out = *static_cast<float const *>(f.data);
    else if (f.type == PluginFieldType::kFLOAT64) out = static_cast<float>(*static_cast<double const *>(f.data));
    else return false;
    return true;
}

/* Attributes from a PluginFieldCollection (the ONNX node's attributes or our own serialization); fields
 * this plugin does not know (plugin_version, plugin_namespace) are ignored. */
bool parse_attrs(PluginFieldCollection const *fc, Attrs &a) {
    if (fc == nullptr) return false;
    for (int32_t i = 0; i < fc->nbFields; ++i) {
        PluginField const &f = fc->fields[i];
        if (f.name == nullptr) continue;
        bool ok = true;
        if (!std::strcmp(f.name, "format")) ok = read_int(f, a.format);
        else if (!std::strcmp(f.name, "heads")) ok = read_int(f, a.heads);
        else if (!std::strcmp(f.name, "head_dim")) ok = read_int(f, a.head_dim);
        else if (!std::strcmp(f.name, "rope_k")) ok = read_int(f, a.rope_k);
        else if (!std::strcmp(f.name, "softmax_scale")) ok = read_float(f, a.softmax_scale);
        if (!ok) {
            log_error(std::string("attribute ") + f.name + " has an unexpected type");
            return false;
        }
    }
    return a.valid();
}

/* What both plugins share: the three capability interfaces, attributes and their serialization. */
class PluginBase : public IPluginV3, public IPluginV3OneCore, public IPluginV3OneBuildV2, public IPluginV3OneRuntime {
public:
    explicit PluginBase(Attrs a) : attrs_(a) {}

    IPluginCapability *getCapabilityInterface(PluginCapabilityType type) noexcept override {
        switch (type) {
            case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore *>(this);
            case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuildV2 *>(this);
            case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime *>(this);
        }
        return nullptr;
    }
    AsciiChar const *getPluginVersion() const noexcept override { return kVersion; }
    AsciiChar const *getPluginNamespace() const noexcept override { return kNamespace; }

    int32_t configurePlugin(DynamicPluginTensorDesc const *, int32_t, DynamicPluginTensorDesc const *,
                            int32_t) noexcept override {
        return 0;
    }
    size_t getWorkspaceSize(DynamicPluginTensorDesc const *, int32_t, DynamicPluginTensorDesc const *,
                            int32_t) const noexcept override {
        return 0;
    }
    int32_t onShapeChange(PluginTensorDesc const *, int32_t, PluginTensorDesc const *, int32_t) noexcept override {
        return 0;
    }
    IPluginV3 *attachToContext(IPluginResourceContext *) noexcept override { return clone(); }

    PluginFieldCollection const *getFieldsToSerialize() noexcept override {
        fields_.clear();
        fields_.emplace_back("format", &attrs_.format, PluginFieldType::kINT32, 1);
        fields_.emplace_back("heads", &attrs_.heads, PluginFieldType::kINT32, 1);
        fields_.emplace_back("head_dim", &attrs_.head_dim, PluginFieldType::kINT32, 1);
        fields_.emplace_back("rope_k", &attrs_.rope_k, PluginFieldType::kINT32, 1);
        fields_.emplace_back("softmax_scale", &attrs_.softmax_scale, PluginFieldType::kFLOAT32, 1);
        collection_.nbFields = static_cast<int32_t>(fields_.size());
        collection_.fields = fields_.data();
        return &collection_;
    }

protected:
    Attrs attrs_;
    std::vector<PluginField> fields_;
    PluginFieldCollection collection_{};

    static bool linear(PluginTensorDesc const &d) { return d.format == TensorFormat::kLINEAR; }
};

/* ---- KVCacheWrite --------------------------------------------------------------------------------------- */
class KVCacheWritePlugin final : public PluginBase {
public:
    using PluginBase::PluginBase;

    IPluginV3 *clone() noexcept override { return new (std::nothrow) KVCacheWritePlugin(attrs_); }
    AsciiChar const *getPluginName() const noexcept override { return kWriteName; }
    int32_t getNbOutputs() const noexcept override { return attrs_.parts(); }

    int32_t getOutputDataTypes(DataType *out, int32_t nbOutputs, DataType const *in, int32_t nbInputs) const noexcept override {
        if (nbInputs != 2 + attrs_.parts() || nbOutputs != attrs_.parts()) return -1;
        for (int32_t j = 0; j < nbOutputs; ++j) out[j] = in[2 + j];
        return 0;
    }
    int32_t getOutputShapes(DimsExprs const *in, int32_t nbInputs, DimsExprs const *, int32_t, DimsExprs *out,
                            int32_t nbOutputs, IExprBuilder &) noexcept override {
        if (nbInputs != 2 + attrs_.parts() || nbOutputs != attrs_.parts()) return -1;
        for (int32_t j = 0; j < nbOutputs; ++j) out[j] = in[2 + j];
        return 0;
    }
    bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const *io, int32_t nbInputs,
                                   int32_t) noexcept override {
        PluginTensorDesc const &d = io[pos].desc;
        if (!linear(d)) return false;
        if (pos == 0) return d.type == DataType::kFLOAT;
        if (pos == 1) return d.type == DataType::kINT32;
        int32_t const part = pos < nbInputs ? pos - 2 : pos - nbInputs;
        return d.type == attrs_.part_type(part);
    }
    int32_t getAliasedInput(int32_t outputIndex) noexcept override { return 2 + outputIndex; }

    int32_t enqueue(PluginTensorDesc const *inDesc, PluginTensorDesc const *, void const *const *inputs,
                    void *const *outputs, void *, cudaStream_t stream) noexcept override {
        int64_t const dim = attrs_.dim();
        int32_t const n = static_cast<int32_t>(volume(inDesc[0].dims) / dim);
        int32_t const rows = static_cast<int32_t>(inDesc[2].dims.d[0]);
        // outputs alias the cache inputs: writing through the output pointers updates the cache in place
        arvc_kv_cache const cache = attrs_.cache(outputs, rows);
        arvc_status const s = arvc_kv_cache_write_cuda(&cache, inputs[0], ARVC_F32, dim,
                                                       static_cast<int32_t const *>(inputs[1]), n,
                                                       ARVC_FLAG_NO_HOST_SYNC, stream);
        if (s != ARVC_OK) log_error(std::string(kWriteName) + ": " + arvc_status_string(s));
        return s == ARVC_OK ? 0 : -1;
    }
};

/* ---- AttentionQCache ------------------------------------------------------------------------------------ */
class AttentionQCachePlugin final : public PluginBase {
public:
    using PluginBase::PluginBase;

    IPluginV3 *clone() noexcept override { return new (std::nothrow) AttentionQCachePlugin(attrs_); }
    AsciiChar const *getPluginName() const noexcept override { return kAttentionName; }
    int32_t getNbOutputs() const noexcept override { return 1; }

    int32_t inputs() const { return 1 + 2 * attrs_.parts() + 1 + (attrs_.rope_k ? 2 : 0); }

    int32_t getOutputDataTypes(DataType *out, int32_t nbOutputs, DataType const *in, int32_t nbInputs) const noexcept override {
        if (nbInputs != inputs() || nbOutputs != 1) return -1;
        out[0] = in[0];
        return 0;
    }
    int32_t getOutputShapes(DimsExprs const *in, int32_t nbInputs, DimsExprs const *, int32_t, DimsExprs *out,
                            int32_t nbOutputs, IExprBuilder &) noexcept override {
        if (nbInputs != inputs() || nbOutputs != 1) return -1;
        out[0] = in[0];
        return 0;
    }
    bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const *io, int32_t nbInputs,
                                   int32_t) noexcept override {
        PluginTensorDesc const &d = io[pos].desc;
        if (!linear(d)) return false;
        int32_t const p = attrs_.parts();
        if (pos == 0 || pos == nbInputs) return d.type == DataType::kFLOAT;      // q, out
        if (pos <= 2 * p) return d.type == attrs_.part_type((pos - 1) % p);      // K parts, V parts
        if (pos == 2 * p + 1) return d.type == DataType::kUINT8;                 // key_valid
        return d.type == DataType::kFLOAT;                                        // rope_k_cos, rope_k_sin
    }
    int32_t getAliasedInput(int32_t) noexcept override { return -1; }

    int32_t enqueue(PluginTensorDesc const *inDesc, PluginTensorDesc const *, void const *const *inputs,
                    void *const *outputs, void *, cudaStream_t stream) noexcept override {
        int32_t const p = attrs_.parts();
        int64_t const dim = attrs_.dim();
        int32_t const n_q = static_cast<int32_t>(volume(inDesc[0].dims) / dim);
        int32_t const rows = static_cast<int32_t>(inDesc[1].dims.d[0]);
        // the kernel only reads the caches; the const_cast adapts to arvc_kv_cache's mutable pointers
        void *k_ptrs[3], *v_ptrs[3];
        for (int32_t j = 0; j < p; ++j) {
            k_ptrs[j] = const_cast<void *>(inputs[1 + j]);
            v_ptrs[j] = const_cast<void *>(inputs[1 + p + j]);
        }
        arvc_kv_cache const k = attrs_.cache(k_ptrs, rows), v = attrs_.cache(v_ptrs, rows);
        auto const *valid = static_cast<uint8_t const *>(inputs[2 * p + 1]);
        float const *cos = attrs_.rope_k ? static_cast<float const *>(inputs[2 * p + 2]) : nullptr;
        float const *sin = attrs_.rope_k ? static_cast<float const *>(inputs[2 * p + 3]) : nullptr;
        arvc_status const s = arvc_attention_qcache_cuda(inputs[0], ARVC_F32, dim, n_q, &k, &v, valid, cos, sin,
                                                         nullptr, nullptr, dim, 0, attrs_.softmax_scale, outputs[0],
                                                         dim, ARVC_FLAG_NO_HOST_SYNC, stream);
        if (s != ARVC_OK) log_error(std::string(kAttentionName) + ": " + arvc_status_string(s));
        return s == ARVC_OK ? 0 : -1;
    }
};

/* ---- creators -------------------------------------------------------------------------------------------- */
template <typename Plugin>
class Creator final : public IPluginCreatorV3One {
public:
    Creator(char const *name, bool attention) : name_(name) {
        fields_.emplace_back("format", nullptr, PluginFieldType::kINT32, 1);
        fields_.emplace_back("heads", nullptr, PluginFieldType::kINT32, 1);
        fields_.emplace_back("head_dim", nullptr, PluginFieldType::kINT32, 1);
        if (attention) {
            fields_.emplace_back("softmax_scale", nullptr, PluginFieldType::kFLOAT32, 1);
            fields_.emplace_back("rope_k", nullptr, PluginFieldType::kINT32, 1);
        }
        collection_.nbFields = static_cast<int32_t>(fields_.size());
        collection_.fields = fields_.data();
    }
    AsciiChar const *getPluginName() const noexcept override { return name_; }
    AsciiChar const *getPluginVersion() const noexcept override { return kVersion; }
    AsciiChar const *getPluginNamespace() const noexcept override { return kNamespace; }
    PluginFieldCollection const *getFieldNames() noexcept override { return &collection_; }

    IPluginV3 *createPlugin(AsciiChar const *, PluginFieldCollection const *fc, TensorRTPhase) noexcept override {
        Attrs a;
        if (!parse_attrs(fc, a)) {
            log_error(std::string(name_) + ": invalid attributes (format 1..4, heads > 0, head_dim > 0, "
                                           "nvfp4 head_dim % 16 == 0)");
            return nullptr;
        }
        return new (std::nothrow) Plugin(a);
    }

private:
    char const *name_;
    std::vector<PluginField> fields_;
    PluginFieldCollection collection_{};
};

Creator<KVCacheWritePlugin> g_write_creator(kWriteName, false);
Creator<AttentionQCachePlugin> g_attention_creator(kAttentionName, true);
IPluginCreatorInterface *g_creators[] = {&g_write_creator, &g_attention_creator};

}  // namespace

extern "C" {

/* IPluginRegistry::loadLibrary's entry points */
void setLoggerFinder(ILoggerFinder *finder) {
    g_logger = finder ? finder->findLogger() : nullptr;
}

IPluginCreatorInterface *const *getCreators(int32_t &nbCreators) {
    nbCreators = static_cast<int32_t>(sizeof(g_creators) / sizeof(g_creators[0]));
    return g_creators;
}

/* For a loader that dlopens the library itself: register both creators with the global registry. */
int arvc_trt_register_creators(void) {
    for (IPluginCreatorInterface *c : g_creators)
        if (!getPluginRegistry()->registerCreator(*c, kNamespace)) return -1;
    return 0;
}

}  // extern "C"
