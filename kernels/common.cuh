// Shared helpers of the trainer's kernels: f32/bf16 conversion and block reductions.
// Every kernel reads its inputs in their storage type and computes in f32.
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f<bf16>(float x) { return __float2bfloat16(x); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float part[32];
  __syncthreads();  // `part` may still be read by a previous call
  v = warp_sum(v);
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  if (lane == 0) part[warp] = v;
  __syncthreads();
  v = lane < warps ? part[lane] : 0.f;
  return warp_sum(v);
}

// Merges two (max, sum of exp(x - max)) pairs of an online softmax.
__device__ __forceinline__ void lse_merge(float &m, float &s, float m2, float s2) {
  if (m2 == -INFINITY) return;
  if (m == -INFINITY) { m = m2; s = s2; return; }
  float mx = fmaxf(m, m2);
  s = s * __expf(m - mx) + s2 * __expf(m2 - mx);
  m = mx;
}

__device__ __forceinline__ void block_lse(float &m, float &s) {
  __shared__ float pm[32], ps[32];
  __syncthreads();
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    lse_merge(m, s, m2, s2);
  }
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  if (lane == 0) { pm[warp] = m; ps[warp] = s; }
  __syncthreads();
  m = lane < warps ? pm[lane] : -INFINITY;
  s = lane < warps ? ps[lane] : 0.f;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    lse_merge(m, s, m2, s2);
  }
}

// 8 consecutive elements through 16-byte accesses (the pointer must be 16-byte aligned).
template <typename T> struct Vec8 {
  static constexpr int loads = sizeof(T) * 8 / 16;  // 16-byte loads per 8 elements: 1 for bf16, 2 for f32
};

template <typename T> __device__ __forceinline__ void load8(const T *p, float *out) {
  const uint4 *v = reinterpret_cast<const uint4 *>(p);
#pragma unroll
  for (int l = 0; l < Vec8<T>::loads; l++) {
    uint4 u = v[l];
    const T *e = reinterpret_cast<const T *>(&u);
#pragma unroll
    for (int k = 0; k < 16 / (int)sizeof(T); k++) out[l * (16 / sizeof(T)) + k] = to_f(e[k]);
  }
}

template <typename T> __device__ __forceinline__ void store8(T *p, const float *in) {
  uint4 *v = reinterpret_cast<uint4 *>(p);
#pragma unroll
  for (int l = 0; l < Vec8<T>::loads; l++) {
    uint4 u;
    T *e = reinterpret_cast<T *>(&u);
#pragma unroll
    for (int k = 0; k < 16 / (int)sizeof(T); k++) e[k] = from_f<T>(in[l * (16 / sizeof(T)) + k]);
    v[l] = u;
  }
}

#define INSTANTIATE_FLOAT_TYPES(MACRO) MACRO(float, f32) MACRO(bf16, bf16)
