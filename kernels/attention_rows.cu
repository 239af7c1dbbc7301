// Row kernels of the tensor-core attention path (src/cuda/mod.rs `attention_*_chunked`): cuBLAS computes the
// score block S = Q_c Kᵀ of a chunk of queries against the keys they can see; these kernels turn it into
// probabilities P (masked, scaled, softmaxed in f32) plus the row log-sum-exp, and, in the backward, recompute
// P from the saved lse and form dS = P ⊙ (dP − δ) · scale.
//
// Score rows are ordered [B·Hkv][rep][len] (the query heads of one KV head stacked, so one batched GEMM per
// KV head serves its whole group): row r is query i = c0 + r % len of head h = hk·rep + (r / len) % rep.
// Visibility as in attention.cu.
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

// Rows hold `kpad` columns (the key prefix padded with zero keys to a multiple of 8, so every row starts 16-byte
// aligned): each thread moves 8 consecutive scores per 16-byte load. Padding columns lie beyond the query
// (j > i), so they are masked like any future key.
template <typename T>
__device__ void softmax_fwd(const T *s, T *p, float *lse, const uint32_t *valid, const uint32_t *seg, int len,
                            int rep, int Hkv, int c0, int kpad, int Hq, int Tn, float scale) {
  size_t r = blockIdx.x;
  RowMap m = row_map(r, len, rep, Hkv, c0);
  const uint32_t *vb = valid + (size_t)m.b * Tn, *sb = seg + (size_t)m.b * Tn;
  const T *row = s + r * kpad;
  float mx = -INFINITY, sum = 0.f;
  for (int j0 = threadIdx.x * 8; j0 < kpad; j0 += blockDim.x * 8) {
    float x[8];
    load8(row + j0, x);
#pragma unroll
    for (int e = 0; e < 8; e++) {
      if (!visible(vb, sb, m.i, j0 + e)) continue;
      float v = x[e] * scale;
      if (v > mx) {
        sum = (mx == -INFINITY ? 0.f : sum * __expf(mx - v)) + 1.f;
        mx = v;
      } else {
        sum += __expf(v - mx);
      }
    }
  }
  block_lse(mx, sum);
  float l = sum > 0.f ? mx + logf(sum) : INFINITY;
  if (threadIdx.x == 0) lse[((size_t)m.b * Hq + m.h) * Tn + m.i] = l;
  for (int j0 = threadIdx.x * 8; j0 < kpad; j0 += blockDim.x * 8) {
    float x[8];
    load8(row + j0, x);
#pragma unroll
    for (int e = 0; e < 8; e++) x[e] = visible(vb, sb, m.i, j0 + e) ? __expf(x[e] * scale - l) : 0.f;
    store8(p + r * kpad + j0, x);
  }
}

template <typename T>
__device__ void softmax_bwd(const T *s, const T *dp, const float *lse, const float *delta, T *p, T *ds,
                            const uint32_t *valid, const uint32_t *seg, int len, int rep, int Hkv, int c0, int kpad,
                            int Hq, int Tn, float scale) {
  size_t r = blockIdx.x;
  RowMap m = row_map(r, len, rep, Hkv, c0);
  const uint32_t *vb = valid + (size_t)m.b * Tn, *sb = seg + (size_t)m.b * Tn;
  size_t at = ((size_t)m.b * Hq + m.h) * Tn + m.i;
  float l = lse[at], d = delta[at];
  for (int j0 = threadIdx.x * 8; j0 < kpad; j0 += blockDim.x * 8) {
    float x[8], g[8];
    load8(s + r * kpad + j0, x);
    load8(dp + r * kpad + j0, g);
#pragma unroll
    for (int e = 0; e < 8; e++) {
      x[e] = visible(vb, sb, m.i, j0 + e) ? __expf(x[e] * scale - l) : 0.f;
      g[e] = x[e] * (g[e] - d) * scale;
    }
    store8(p + r * kpad + j0, x);
    store8(ds + r * kpad + j0, g);
  }
}

#define ROWS(T, NAME)                                                                                      \
  extern "C" __global__ void attn_softmax_fwd_##NAME(const T *s, T *p, float *lse, const uint32_t *valid,   \
                                                     const uint32_t *seg, int len, int rep, int Hkv, int c0,  \
                                                     int kpad, int Hq, int Tn, float scale) {               \
    softmax_fwd<T>(s, p, lse, valid, seg, len, rep, Hkv, c0, kpad, Hq, Tn, scale);                         \
  }                                                                                                       \
  extern "C" __global__ void attn_softmax_bwd_##NAME(                                                     \
      const T *s, const T *dp, const float *lse, const float *delta, T *p, T *ds, const uint32_t *valid,   \
      const uint32_t *seg, int len, int rep, int Hkv, int c0, int kpad, int Hq, int Tn, float scale) {     \
    softmax_bwd<T>(s, dp, lse, delta, p, ds, valid, seg, len, rep, Hkv, c0, kpad, Hq, Tn, scale);          \
  }
INSTANTIATE_FLOAT_TYPES(ROWS)
