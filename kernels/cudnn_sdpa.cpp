// Fused attention (forward and backward) through cuDNN's SDPA, built with the cuDNN frontend's graph API and
// called from Rust (src/cuda/cudnn_sdpa.rs) through a plain C ABI.
//
// libcudnn is loaded at run time (dlopen; the frontend's NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING reaches every
// cuDNN and CUDA runtime entry point through it), so the binary links no cuDNN and runs where none is
// installed: trainer_cudnn_init then fails with a message and Rust keeps our own kernels. The version policy
// (which cuDNN is recent enough) lives in Rust, where CPU tests cover it; this file only reports versions.
//
// Every call returns 0 on success; on failure, non-zero, with the reason in trainer_cudnn_last_error() (for the
// calling thread). No C++ exception crosses the ABI.

#include <cudnn_frontend.h>
#include <dlfcn.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

namespace cudnn_frontend {
// The frontend resolves cuDNN's symbols in this handle (declared extern by cudnn_frontend_shim.h).
void *cudnn_dlhandle = nullptr;
}  // namespace cudnn_frontend

namespace fe = cudnn_frontend;

extern "C" {
// One attention call's geometry. Strides are in elements, in (batch, head, token, feature) order, so both our
// [B, H, T, D] tensors and a [B, T, H, D] layout describe themselves; dO/dQ/dK/dV share O's/Q's/K's/V's.
struct TrainerSdpaShape {
    int64_t b, t, hq, hkv, d;
    int64_t q_stride[4], k_stride[4], v_stride[4], o_stride[4];
    int32_t causal;  // top-left causal mask (query i sees keys j <= i)
    int32_t padded;  // keys j >= seq_len_kv[b] hidden; queries all T (see src/cuda/cudnn_sdpa.rs)
    float scale;
};
}

namespace {

thread_local std::string last_error;

int fail(std::string msg) {
    last_error = std::move(msg);
    return 1;
}

enum Uid : int64_t { Q = 1, K, V, O, STATS, DO, DQ, DK, DV, SEQ_Q, SEQ_KV };

// Plans are cached per shape: building one costs milliseconds to seconds (heuristics, kernel compilation),
// executing it microseconds.
using Key = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, int32_t, int32_t, uint32_t, std::vector<int64_t>>;

Key key_of(const TrainerSdpaShape &s, int backward) {
    std::vector<int64_t> strides;
    for (const int64_t *st : {s.q_stride, s.k_stride, s.v_stride, s.o_stride}) strides.insert(strides.end(), st, st + 4);
    uint32_t scale_bits;
    std::memcpy(&scale_bits, &s.scale, sizeof scale_bits);
    return {backward, s.b, s.t, s.hq, s.hkv, s.d, s.causal, s.padded, scale_bits, strides};
}

struct State {
    std::mutex mu;
    cudnnHandle_t handle = nullptr;
    std::map<Key, std::shared_ptr<fe::graph::Graph>> plans;
    // Shapes whose plan could not be built, with the reason, so a failing shape is not rebuilt every layer.
    std::map<Key, std::string> unsupported;
};

State &state() {
    static State s;
    return s;
}

std::shared_ptr<fe::graph::Tensor_attributes> bf16_tensor(fe::graph::Graph &g, const char *name, Uid uid, int64_t b, int64_t h,
                                                          int64_t t, int64_t d, const int64_t *stride) {
    return g.tensor(fe::graph::Tensor_attributes()
                        .set_name(name)
                        .set_uid(uid)
                        .set_dim({b, h, t, d})
                        .set_stride({stride[0], stride[1], stride[2], stride[3]})
                        .set_data_type(fe::DataType_t::BFLOAT16));
}

std::shared_ptr<fe::graph::Tensor_attributes> stats_tensor(fe::graph::Graph &g, const TrainerSdpaShape &s) {
    // Our lse layout: [B, Hq, T, 1] f32, contiguous.
    return g.tensor(fe::graph::Tensor_attributes()
                        .set_name("stats")
                        .set_uid(STATS)
                        .set_dim({s.b, s.hq, s.t, 1})
                        .set_stride({s.hq * s.t, s.t, 1, 1})
                        .set_data_type(fe::DataType_t::FLOAT));
}

std::shared_ptr<fe::graph::Tensor_attributes> seq_len_tensor(fe::graph::Graph &g, const char *name, Uid uid, int64_t b) {
    return g.tensor(fe::graph::Tensor_attributes()
                        .set_name(name)
                        .set_uid(uid)
                        .set_dim({b, 1, 1, 1})
                        .set_stride({1, 1, 1, 1})
                        .set_data_type(fe::DataType_t::INT32));
}

std::shared_ptr<fe::graph::Graph> new_graph() {
    auto g = std::make_shared<fe::graph::Graph>();
    g->set_io_data_type(fe::DataType_t::BFLOAT16)
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
    return g;
}

std::shared_ptr<fe::graph::Graph> forward_graph(const TrainerSdpaShape &s) {
    auto g = new_graph();
    auto q = bf16_tensor(*g, "q", Q, s.b, s.hq, s.t, s.d, s.q_stride);
    auto k = bf16_tensor(*g, "k", K, s.b, s.hkv, s.t, s.d, s.k_stride);
    auto v = bf16_tensor(*g, "v", V, s.b, s.hkv, s.t, s.d, s.v_stride);
    auto opts = fe::graph::SDPA_attributes().set_name("sdpa_fwd").set_generate_stats(true).set_attn_scale(s.scale);
    if (s.causal) opts.set_causal_mask(true);
    if (s.padded) {
        opts.set_padding_mask(true)
            .set_seq_len_q(seq_len_tensor(*g, "seq_q", SEQ_Q, s.b))
            .set_seq_len_kv(seq_len_tensor(*g, "seq_kv", SEQ_KV, s.b));
    }
    auto [o, stats] = g->sdpa(q, k, v, opts);
    o->set_output(true).set_uid(O).set_dim({s.b, s.hq, s.t, s.d}).set_stride({s.o_stride[0], s.o_stride[1], s.o_stride[2], s.o_stride[3]});
    stats->set_output(true).set_uid(STATS).set_data_type(fe::DataType_t::FLOAT).set_dim({s.b, s.hq, s.t, 1}).set_stride({s.hq * s.t, s.t, 1, 1});
    return g;
}

std::shared_ptr<fe::graph::Graph> backward_graph(const TrainerSdpaShape &s) {
    auto g = new_graph();
    auto q = bf16_tensor(*g, "q", Q, s.b, s.hq, s.t, s.d, s.q_stride);
    auto k = bf16_tensor(*g, "k", K, s.b, s.hkv, s.t, s.d, s.k_stride);
    auto v = bf16_tensor(*g, "v", V, s.b, s.hkv, s.t, s.d, s.v_stride);
    auto o = bf16_tensor(*g, "o", O, s.b, s.hq, s.t, s.d, s.o_stride);
    auto dout = bf16_tensor(*g, "dO", DO, s.b, s.hq, s.t, s.d, s.o_stride);
    auto stats = stats_tensor(*g, s);
    auto opts = fe::graph::SDPA_backward_attributes().set_name("sdpa_bwd").set_attn_scale(s.scale);
    if (s.causal) opts.set_causal_mask(true);
    if (s.padded) {
        opts.set_padding_mask(true)
            .set_seq_len_q(seq_len_tensor(*g, "seq_q", SEQ_Q, s.b))
            .set_seq_len_kv(seq_len_tensor(*g, "seq_kv", SEQ_KV, s.b));
    }
    auto [dq, dk, dv] = g->sdpa_backward(q, k, v, o, dout, stats, opts);
    dq->set_output(true).set_uid(DQ).set_dim({s.b, s.hq, s.t, s.d}).set_stride({s.q_stride[0], s.q_stride[1], s.q_stride[2], s.q_stride[3]});
    dk->set_output(true).set_uid(DK).set_dim({s.b, s.hkv, s.t, s.d}).set_stride({s.k_stride[0], s.k_stride[1], s.k_stride[2], s.k_stride[3]});
    dv->set_output(true).set_uid(DV).set_dim({s.b, s.hkv, s.t, s.d}).set_stride({s.v_stride[0], s.v_stride[1], s.v_stride[2], s.v_stride[3]});
    return g;
}

// The built plan for this shape, or null with last_error set. Caller holds the state's lock.
fe::graph::Graph *plan(State &st, const TrainerSdpaShape &s, int backward) {
    if (!st.handle) {
        fail("cuDNN SDPA: trainer_cudnn_init has not succeeded");
        return nullptr;
    }
    Key key = key_of(s, backward);
    if (auto it = st.plans.find(key); it != st.plans.end()) return it->second.get();
    if (auto it = st.unsupported.find(key); it != st.unsupported.end()) {
        fail(it->second);
        return nullptr;
    }
    auto g = backward ? backward_graph(s) : forward_graph(s);
    const char *step = "validate";
    fe::error_t e = g->validate();
    if (e.is_good()) { step = "build_operation_graph"; e = g->build_operation_graph(st.handle); }
    if (e.is_good()) { step = "create_execution_plans"; e = g->create_execution_plans({fe::HeurMode_t::A}); }
    if (e.is_good()) { step = "check_support"; e = g->check_support(); }
    if (e.is_good()) { step = "build_plans"; e = g->build_plans(); }
    if (e.is_bad()) {
        std::string msg = std::string("cuDNN SDPA ") + (backward ? "backward" : "forward") + " (B=" + std::to_string(s.b) +
                          " T=" + std::to_string(s.t) + " Hq=" + std::to_string(s.hq) + " Hkv=" + std::to_string(s.hkv) +
                          " D=" + std::to_string(s.d) + "): " + step + ": " + e.get_message();
        st.unsupported.emplace(key, msg);
        fail(msg);
        return nullptr;
    }
    auto *raw = g.get();
    st.plans.emplace(key, std::move(g));
    return raw;
}

template <class F>
int guarded(F &&f) {
    try {
        return f();
    } catch (const std::exception &e) {
        return fail(std::string("cuDNN SDPA: ") + e.what());
    } catch (...) {
        return fail("cuDNN SDPA: unknown C++ exception");
    }
}

int run(fe::graph::Graph *g, void *stream, std::unordered_map<int64_t, void *> &pack, void *workspace) {
    State &st = state();
    cudnnStatus_t ss = fe::detail::set_stream(st.handle, static_cast<cudaStream_t>(stream));
    if (ss != CUDNN_STATUS_SUCCESS) return fail("cuDNN SDPA: cudnnSetStream failed with status " + std::to_string(ss));
    fe::error_t e = g->execute(st.handle, pack, workspace);
    if (e.is_bad()) return fail("cuDNN SDPA: execute: " + e.get_message());
    return 0;
}

}  // namespace

extern "C" {

const char *trainer_cudnn_last_error(void) { return last_error.c_str(); }

// Loads cuDNN (lib: a path or soname; null means "libcudnn.so.9" through the usual search) and creates the
// handle on the calling thread's current CUDA context. Reports cudnnGetVersion() and cudnnGetCudartVersion().
int trainer_cudnn_init(const char *lib, size_t *version, size_t *cudart_version) {
    return guarded([&] {
        State &st = state();
        std::lock_guard<std::mutex> lock(st.mu);
        if (!fe::cudnn_dlhandle) {
            const char *name = lib ? lib : "libcudnn.so.9";
            void *h = dlopen(name, RTLD_NOW | RTLD_LOCAL);
            if (!h) {
                const char *why = dlerror();
                return fail(std::string("could not load ") + name + ": " + (why ? why : "unknown dlopen error"));
            }
            fe::cudnn_dlhandle = h;
        }
        using VersionFn = size_t (*)(void);
        auto get_version = reinterpret_cast<VersionFn>(dlsym(fe::cudnn_dlhandle, "cudnnGetVersion"));
        auto get_cudart = reinterpret_cast<VersionFn>(dlsym(fe::cudnn_dlhandle, "cudnnGetCudartVersion"));
        if (!get_version || !get_cudart) return fail("the loaded libcudnn has no cudnnGetVersion/cudnnGetCudartVersion");
        *version = get_version();
        *cudart_version = get_cudart();
        if (!st.handle) {
            cudnnStatus_t s = fe::detail::create_handle(&st.handle);
            if (s != CUDNN_STATUS_SUCCESS) {
                st.handle = nullptr;
                return fail("cudnnCreate failed with status " + std::to_string(s));
            }
        }
        return 0;
    });
}

// Builds (or finds) the plan for this shape and reports the workspace it needs, so the caller can allocate it
// on its own stream-ordered pool. Fails for a shape this cuDNN does not support (the caller then falls back).
int trainer_cudnn_sdpa_workspace(const TrainerSdpaShape *s, int backward, int64_t *bytes) {
    return guarded([&] {
        State &st = state();
        std::lock_guard<std::mutex> lock(st.mu);
        fe::graph::Graph *g = plan(st, *s, backward);
        if (!g) return 1;
        fe::error_t e = g->get_workspace_size(*bytes);
        if (e.is_bad()) return fail("cuDNN SDPA: get_workspace_size: " + e.get_message());
        return 0;
    });
}

// o = softmax(scale·q·kᵀ + mask)·v and stats = its row log-sum-exp (natural log, f32 [B, Hq, T, 1]).
// seq_q/seq_kv: int32 [B] on the device, read only when the shape is padded.
int trainer_cudnn_sdpa_fwd(const TrainerSdpaShape *s, void *stream, const void *q, const void *k, const void *v,
                           const int32_t *seq_q, const int32_t *seq_kv, void *o, float *stats, void *workspace) {
    return guarded([&] {
        State &st = state();
        std::lock_guard<std::mutex> lock(st.mu);
        fe::graph::Graph *g = plan(st, *s, 0);
        if (!g) return 1;
        std::unordered_map<int64_t, void *> pack = {
            {Q, const_cast<void *>(q)}, {K, const_cast<void *>(k)}, {V, const_cast<void *>(v)}, {O, o}, {STATS, stats}};
        if (s->padded) {
            pack[SEQ_Q] = const_cast<int32_t *>(seq_q);
            pack[SEQ_KV] = const_cast<int32_t *>(seq_kv);
        }
        return run(g, stream, pack, workspace);
    });
}

// dq, dk, dv from dO and what the forward produced (o, stats).
int trainer_cudnn_sdpa_bwd(const TrainerSdpaShape *s, void *stream, const void *q, const void *k, const void *v,
                           const void *o, const void *dout, const float *stats, const int32_t *seq_q,
                           const int32_t *seq_kv, void *dq, void *dk, void *dv, void *workspace) {
    return guarded([&] {
        State &st = state();
        std::lock_guard<std::mutex> lock(st.mu);
        fe::graph::Graph *g = plan(st, *s, 1);
        if (!g) return 1;
        std::unordered_map<int64_t, void *> pack = {
            {Q, const_cast<void *>(q)},   {K, const_cast<void *>(k)},       {V, const_cast<void *>(v)},
            {O, const_cast<void *>(o)},   {DO, const_cast<void *>(dout)},   {STATS, const_cast<float *>(stats)},
            {DQ, dq},                     {DK, dk},                         {DV, dv}};
        if (s->padded) {
            pack[SEQ_Q] = const_cast<int32_t *>(seq_q);
            pack[SEQ_KV] = const_cast<int32_t *>(seq_kv);
        }
        return run(g, stream, pack, workspace);
    });
}

}  // extern "C"
