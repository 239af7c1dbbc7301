// Fused causal attention, flash-style: tiles of queries × keys in shared memory, an online softmax in
// registers, only the per-row log-sum-exp saved; the backward recomputes the probabilities tile by tile.
// Layouts: q [B, Hq, T, D], k/v [B, Hkv, T, D] (GQA/MQA: query head h reads kv head h / (Hq/Hkv)),
// o/do [B, Hq, T, D], lse/delta [B, Hq, T] f32. Query i may attend key j iff j <= i, key j is not padding
// (valid[b, j] != 0) and both lie in the same packed example (seg[b, i] == seg[b, j]).
// A query row with no visible key gets o = 0 and lse = +inf (it is padding; nothing reads it).
// 256 threads: thread (ty = tid / 16, tx = tid % 16) owns tile rows ty + 16·i and columns tx + 16·j.
#include "common.cuh"

#define NT 256

template <typename T> struct Pad { static constexpr int v = 4 / sizeof(T); };  // +1 word per row: no bank conflicts

template <typename T, int D>
__device__ __forceinline__ void load_tile(T *dst, const T *src, int row0, int rows, int Tn) {
  constexpr int S = D + Pad<T>::v;
  for (int e = threadIdx.x; e < rows * D; e += NT) {
    int r = e / D, c = e % D;
    dst[r * S + c] = row0 + r < Tn ? src[(size_t)(row0 + r) * D + c] : from_f<T>(0.f);
  }
}

template <typename T, int D, int BQ, int BK>
__device__ void attn_fwd(const T *q, const T *k, const T *v, const uint32_t *valid, const uint32_t *seg, T *o,
                         float *lse, int Hq, int Hkv, int Tn, float scale) {
  constexpr int S = D + Pad<T>::v, RI = BQ / 16, CJ = BK / 16, DJ = D / 16;
  extern __shared__ __align__(16) unsigned char smem[];
  T *Qs = (T *)smem, *Ks = Qs + BQ * S, *Vs = Ks + BK * S;
  float *Ps = (float *)(Vs + BK * S);
  int *kvis = (int *)(Ps + BQ * (BK + 1));  // key j usable: its segment, or -1 when padding / beyond T
  const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * BQ;
  const int hk = h / (Hq / Hkv);
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const T *qh = q + ((size_t)b * Hq + h) * Tn * D;
  const T *kh = k + ((size_t)b * Hkv + hk) * Tn * D;
  const T *vh = v + ((size_t)b * Hkv + hk) * Tn * D;
  const uint32_t *vb = valid + (size_t)b * Tn, *sb = seg + (size_t)b * Tn;

  load_tile<T, D>(Qs, qh, q0, BQ, Tn);
  int qseg[RI];
  float m[RI], l[RI], acc[RI][DJ];
#pragma unroll
  for (int i = 0; i < RI; i++) {
    int r = q0 + ty + 16 * i;
    qseg[i] = r < Tn ? (int)sb[r] : -2;
    m[i] = -INFINITY;
    l[i] = 0.f;
#pragma unroll
    for (int j = 0; j < DJ; j++) acc[i][j] = 0.f;
  }
  const int last_q = min(q0 + BQ, Tn) - 1;
  for (int k0 = 0; k0 <= last_q; k0 += BK) {
    __syncthreads();
    load_tile<T, D>(Ks, kh, k0, BK, Tn);
    load_tile<T, D>(Vs, vh, k0, BK, Tn);
    for (int c = threadIdx.x; c < BK; c += NT) kvis[c] = (k0 + c < Tn && vb[k0 + c]) ? (int)sb[k0 + c] : -1;
    __syncthreads();
    float s[RI][CJ];
#pragma unroll
    for (int i = 0; i < RI; i++)
#pragma unroll
      for (int j = 0; j < CJ; j++) s[i][j] = 0.f;
    for (int d = 0; d < D; d++) {
      float qv[RI], kv[CJ];
#pragma unroll
      for (int i = 0; i < RI; i++) qv[i] = to_f(Qs[(ty + 16 * i) * S + d]);
#pragma unroll
      for (int j = 0; j < CJ; j++) kv[j] = to_f(Ks[(tx + 16 * j) * S + d]);
#pragma unroll
      for (int i = 0; i < RI; i++)
#pragma unroll
        for (int j = 0; j < CJ; j++) s[i][j] += qv[i] * kv[j];
    }
#pragma unroll
    for (int i = 0; i < RI; i++) {
      int r = q0 + ty + 16 * i;
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < CJ; j++) {
        int c = tx + 16 * j;
        bool vis = k0 + c <= r && kvis[c] == qseg[i];
        s[i][j] = vis ? s[i][j] * scale : -INFINITY;
        mx = fmaxf(mx, s[i][j]);
      }
#pragma unroll
      for (int off = 8; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      float m_new = fmaxf(m[i], mx);
      float m_use = m_new == -INFINITY ? 0.f : m_new;
      float alpha = __expf(m[i] - m_use);
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < CJ; j++) {
        float p = __expf(s[i][j] - m_use);
        sum += p;
        Ps[(ty + 16 * i) * (BK + 1) + tx + 16 * j] = p;
      }
#pragma unroll
      for (int off = 8; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
      l[i] = l[i] * alpha + sum;
      m[i] = m_new;
#pragma unroll
      for (int j = 0; j < DJ; j++) acc[i][j] *= alpha;
    }
    __syncthreads();
    for (int c = 0; c < BK; c++) {
      float vv[DJ];
#pragma unroll
      for (int j = 0; j < DJ; j++) vv[j] = to_f(Vs[c * S + tx + 16 * j]);
#pragma unroll
      for (int i = 0; i < RI; i++) {
        float p = Ps[(ty + 16 * i) * (BK + 1) + c];
#pragma unroll
        for (int j = 0; j < DJ; j++) acc[i][j] += p * vv[j];
      }
    }
  }
#pragma unroll
  for (int i = 0; i < RI; i++) {
    int r = q0 + ty + 16 * i;
    if (r >= Tn) continue;
    float inv = l[i] > 0.f ? 1.f / l[i] : 0.f;
    T *orow = o + (((size_t)b * Hq + h) * Tn + r) * D;
#pragma unroll
    for (int j = 0; j < DJ; j++) orow[tx + 16 * j] = from_f<T>(acc[i][j] * inv);
    if (tx == 0) lse[((size_t)b * Hq + h) * Tn + r] = l[i] > 0.f ? m[i] + logf(l[i]) : INFINITY;
  }
}

// One block per (key tile, kv head, batch): dK and dV of its keys accumulate in registers over every query
// tile and every query head of the group (no atomics); dQ is added into an f32 buffer with atomics.
template <typename T, int D, int BQ, int BK>
__device__ void attn_bwd(const T *q, const T *k, const T *v, const T *dout, const float *lse, const float *delta,
                         const uint32_t *valid, const uint32_t *seg, float *dq, T *dk, T *dv, int Hq, int Hkv,
                         int Tn, float scale) {
  constexpr int S = D + Pad<T>::v, QI = BQ / 16, CJ = BK / 16, KI = BK / 16, DJ = D / 16;
  extern __shared__ __align__(16) unsigned char smem[];
  T *Ks = (T *)smem, *Vs = Ks + BK * S, *Qs = Vs + BK * S, *dOs = Qs + BQ * S;
  float *Ps = (float *)(dOs + BQ * S), *dSs = Ps + BQ * (BK + 1);
  float *lse_s = dSs + BQ * (BK + 1), *delta_s = lse_s + BQ;
  int *kvis = (int *)(delta_s + BQ), *qseg = kvis + BK;
  const int b = blockIdx.z, hk = blockIdx.y, k0 = blockIdx.x * BK;
  const int rep = Hq / Hkv;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const uint32_t *vb = valid + (size_t)b * Tn, *sb = seg + (size_t)b * Tn;
  const T *kh = k + ((size_t)b * Hkv + hk) * Tn * D;
  const T *vh = v + ((size_t)b * Hkv + hk) * Tn * D;
  load_tile<T, D>(Ks, kh, k0, BK, Tn);
  load_tile<T, D>(Vs, vh, k0, BK, Tn);
  for (int c = threadIdx.x; c < BK; c += NT) kvis[c] = (k0 + c < Tn && vb[k0 + c]) ? (int)sb[k0 + c] : -1;
  float ak[KI][DJ], av[KI][DJ];
#pragma unroll
  for (int i = 0; i < KI; i++)
#pragma unroll
    for (int j = 0; j < DJ; j++) ak[i][j] = av[i][j] = 0.f;

  for (int hr = 0; hr < rep; hr++) {
    const int h = hk * rep + hr;
    const size_t hoff = ((size_t)b * Hq + h) * Tn;
    for (int q0 = (k0 / BQ) * BQ; q0 < Tn; q0 += BQ) {
      __syncthreads();
      load_tile<T, D>(Qs, q + hoff * D, q0, BQ, Tn);
      load_tile<T, D>(dOs, dout + hoff * D, q0, BQ, Tn);
      for (int r = threadIdx.x; r < BQ; r += NT) {
        bool in = q0 + r < Tn;
        lse_s[r] = in ? lse[hoff + q0 + r] : INFINITY;
        delta_s[r] = in ? delta[hoff + q0 + r] : 0.f;
        qseg[r] = in ? (int)sb[q0 + r] : -2;
      }
      __syncthreads();
      float s[QI][CJ], dp[QI][CJ];
#pragma unroll
      for (int i = 0; i < QI; i++)
#pragma unroll
        for (int j = 0; j < CJ; j++) s[i][j] = dp[i][j] = 0.f;
      for (int d = 0; d < D; d++) {
        float qv[QI], gv[QI], kv[CJ], vv[CJ];
#pragma unroll
        for (int i = 0; i < QI; i++) {
          qv[i] = to_f(Qs[(ty + 16 * i) * S + d]);
          gv[i] = to_f(dOs[(ty + 16 * i) * S + d]);
        }
#pragma unroll
        for (int j = 0; j < CJ; j++) {
          kv[j] = to_f(Ks[(tx + 16 * j) * S + d]);
          vv[j] = to_f(Vs[(tx + 16 * j) * S + d]);
        }
#pragma unroll
        for (int i = 0; i < QI; i++)
#pragma unroll
          for (int j = 0; j < CJ; j++) {
            s[i][j] += qv[i] * kv[j];
            dp[i][j] += gv[i] * vv[j];
          }
      }
#pragma unroll
      for (int i = 0; i < QI; i++) {
        int rl = ty + 16 * i, r = q0 + rl;
#pragma unroll
        for (int j = 0; j < CJ; j++) {
          int c = tx + 16 * j;
          bool vis = r < Tn && k0 + c <= r && kvis[c] == qseg[rl];
          float p = vis ? __expf(s[i][j] * scale - lse_s[rl]) : 0.f;
          Ps[rl * (BK + 1) + c] = p;
          dSs[rl * (BK + 1) + c] = p * (dp[i][j] - delta_s[rl]) * scale;
        }
      }
      __syncthreads();
      // dV += Pᵀ dO, dK += dSᵀ Q over this tile's queries.
      for (int r = 0; r < BQ; r++) {
        float gv[DJ], qv[DJ];
#pragma unroll
        for (int j = 0; j < DJ; j++) {
          gv[j] = to_f(dOs[r * S + tx + 16 * j]);
          qv[j] = to_f(Qs[r * S + tx + 16 * j]);
        }
#pragma unroll
        for (int i = 0; i < KI; i++) {
          float p = Ps[r * (BK + 1) + ty + 16 * i], ds = dSs[r * (BK + 1) + ty + 16 * i];
#pragma unroll
          for (int j = 0; j < DJ; j++) {
            av[i][j] += p * gv[j];
            ak[i][j] += ds * qv[j];
          }
        }
      }
      // dQ += dS K for this tile's queries.
#pragma unroll
      for (int i = 0; i < QI; i++) {
        int rl = ty + 16 * i, r = q0 + rl;
        float gq[DJ];
#pragma unroll
        for (int j = 0; j < DJ; j++) gq[j] = 0.f;
        for (int c = 0; c < BK; c++) {
          float ds = dSs[rl * (BK + 1) + c];
#pragma unroll
          for (int j = 0; j < DJ; j++) gq[j] += ds * to_f(Ks[c * S + tx + 16 * j]);
        }
        if (r < Tn)
#pragma unroll
          for (int j = 0; j < DJ; j++) atomicAdd(dq + (hoff + r) * D + tx + 16 * j, gq[j]);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < KI; i++) {
    int r = k0 + ty + 16 * i;
    if (r >= Tn) continue;
    size_t off = (((size_t)b * Hkv + hk) * Tn + r) * D;
#pragma unroll
    for (int j = 0; j < DJ; j++) {
      dk[off + tx + 16 * j] = from_f<T>(ak[i][j]);
      dv[off + tx + 16 * j] = from_f<T>(av[i][j]);
    }
  }
}

// Tile sizes: 64×64 unless the row of D elements is 1 KiB or more (f32 with D = 256), then 32×32 to stay
// within shared memory and registers. The host computes the same sizes (src/cuda/attention.rs).
#define TILE(T, D) ((int)sizeof(T) * (D) >= 1024 ? 32 : 64)

#define ATTN(T, NAME, D)                                                                                   \
  extern "C" __global__ void __launch_bounds__(NT) attn_fwd_##NAME##_d##D(                               \
      const T *q, const T *k, const T *v, const uint32_t *valid, const uint32_t *seg, T *o, float *lse,    \
      int Hq, int Hkv, int Tn, float scale) {                                                             \
    attn_fwd<T, D, TILE(T, D), TILE(T, D)>(q, k, v, valid, seg, o, lse, Hq, Hkv, Tn, scale);              \
  }                                                                                                       \
  extern "C" __global__ void __launch_bounds__(NT) attn_bwd_##NAME##_d##D(                               \
      const T *q, const T *k, const T *v, const T *dout, const float *lse, const float *delta,             \
      const uint32_t *valid, const uint32_t *seg, float *dq, T *dk, T *dv, int Hq, int Hkv, int Tn,        \
      float scale) {                                                                                      \
    attn_bwd<T, D, TILE(T, D), TILE(T, D)>(q, k, v, dout, lse, delta, valid, seg, dq, dk, dv, Hq, Hkv, Tn, \
                                           scale);                                                        \
  }
#define ATTN_DIMS(T, NAME) ATTN(T, NAME, 16) ATTN(T, NAME, 32) ATTN(T, NAME, 64) ATTN(T, NAME, 128) ATTN(T, NAME, 256)
INSTANTIATE_FLOAT_TYPES(ATTN_DIMS)
