// Row kernels of the tensor-core attention path (src/cuda/mod.rs `attention_*_chunked`): cuBLAS computes the
// score block S = Q_c Kᵀ of a chunk of queries against the keys they can see; these kernels turn it into
// probabilities P (masked, scaled, softmaxed in f32) plus the row log-sum-exp, and, in the backward, recompute
// P from the saved lse and form dS = P ⊙ (dP − δ) · scale.
//
// Score rows are ordered [B·Hkv][rep][len] (the query heads of one KV head stacked, so one batched GEMM per
// KV head serves its whole group): row r is query i = c0 + r % len of head h = hk·rep + (r / len) % rep.
// Each row has `kend` columns: keys 0..kend. Visibility as in attention.cu.
#include "common.cuh"

struct RowMap {
  int b, h, i;
};

__device__ __forceinline__ RowMap row_map(size_t r, int len, int rep, int Hkv, int c0) {
  size_t per_bh = (size_t)rep * len;
  int bh = r / per_bh;
  int w = r % per_bh;
  RowMap m;
  m.b = bh / Hkv;
  m.h = (bh % Hkv) * rep + w / len;
  m.i = c0 + w % len;
  return m;
}

__device__ __forceinline__ bool visible(const uint32_t *vb, const uint32_t *sb, int i, int j) {
  return j <= i && vb[j] && sb[j] == sb[i];
}

template <typename T>
__device__ void softmax_fwd(const T *s, T *p, float *lse, const uint32_t *valid, const uint32_t *seg, int len,
                            int rep, int Hkv, int c0, int kend, int Hq, int Tn, float scale) {
  size_t r = blockIdx.x;
  RowMap m = row_map(r, len, rep, Hkv, c0);
  const uint32_t *vb = valid + (size_t)m.b * Tn, *sb = seg + (size_t)m.b * Tn;
  const T *row = s + r * kend;
  float mx = -INFINITY, sum = 0.f;
  for (int j = threadIdx.x; j < kend; j += blockDim.x) {
    if (!visible(vb, sb, m.i, j)) continue;
    float v = to_f(row[j]) * scale;
    if (v > mx) {
      sum = (mx == -INFINITY ? 0.f : sum * __expf(mx - v)) + 1.f;
      mx = v;
    } else {
      sum += __expf(v - mx);
    }
  }
  block_lse(mx, sum);
  float l = sum > 0.f ? mx + logf(sum) : INFINITY;
  if (threadIdx.x == 0) lse[((size_t)m.b * Hq + m.h) * Tn + m.i] = l;
  for (int j = threadIdx.x; j < kend; j += blockDim.x) {
    float pv = visible(vb, sb, m.i, j) ? __expf(to_f(row[j]) * scale - l) : 0.f;
    p[r * kend + j] = from_f<T>(pv);
  }
}

template <typename T>
__device__ void softmax_bwd(const T *s, const T *dp, const float *lse, const float *delta, T *p, T *ds,
                            const uint32_t *valid, const uint32_t *seg, int len, int rep, int Hkv, int c0, int kend,
                            int Hq, int Tn, float scale) {
  size_t r = blockIdx.x;
  RowMap m = row_map(r, len, rep, Hkv, c0);
  const uint32_t *vb = valid + (size_t)m.b * Tn, *sb = seg + (size_t)m.b * Tn;
  size_t at = ((size_t)m.b * Hq + m.h) * Tn + m.i;
  float l = lse[at], d = delta[at];
  for (int j = threadIdx.x; j < kend; j += blockDim.x) {
    size_t e = r * kend + j;
    float pv = visible(vb, sb, m.i, j) ? __expf(to_f(s[e]) * scale - l) : 0.f;
    p[e] = from_f<T>(pv);
    ds[e] = from_f<T>(pv * (to_f(dp[e]) - d) * scale);
  }
}

#define ROWS(T, NAME)                                                                                      \
  extern "C" __global__ void attn_softmax_fwd_##NAME(const T *s, T *p, float *lse, const uint32_t *valid,   \
                                                     const uint32_t *seg, int len, int rep, int Hkv, int c0,  \
                                                     int kend, int Hq, int Tn, float scale) {               \
    softmax_fwd<T>(s, p, lse, valid, seg, len, rep, Hkv, c0, kend, Hq, Tn, scale);                         \
  }                                                                                                       \
  extern "C" __global__ void attn_softmax_bwd_##NAME(                                                     \
      const T *s, const T *dp, const float *lse, const float *delta, T *p, T *ds, const uint32_t *valid,   \
      const uint32_t *seg, int len, int rep, int Hkv, int c0, int kend, int Hq, int Tn, float scale) {     \
    softmax_bwd<T>(s, dp, lse, delta, p, ds, valid, seg, len, rep, Hkv, c0, kend, Hq, Tn, scale);          \
  }
INSTANTIATE_FLOAT_TYPES(ROWS)
