// Rotary embeddings in transformers' rotate-half layout, fused with the head transpose:
// forward reads the projection output [B, T, H, D] and writes [B, H, T, D] rotated; backward reads the
// gradient in [B, H, T, D] and writes the un-rotated gradient back in projection layout [B, T, H, D].
// cos/sin: [B, T, D] (per-token positions, so packed sequences restart them).
#include "common.cuh"

template <typename T>
__device__ void rope(const T *x, const T *cos, const T *sin, T *y, int B, int Tn, int H, int D, bool backward) {
  int half = D / 2;
  size_t n = (size_t)B * Tn * H * half;
  for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < n; idx += (size_t)gridDim.x * blockDim.x) {
    int i = idx % half;
    size_t rest = idx / half;
    int h = rest % H;
    rest /= H;
    int t = rest % Tn;
    int b = rest / Tn;
    size_t rows = (((size_t)b * Tn + t) * H + h) * D;   // [B, T, H, D]
    size_t heads = (((size_t)b * H + h) * Tn + t) * D;  // [B, H, T, D]
    size_t tab = ((size_t)b * Tn + t) * D;
    float c1 = to_f(cos[tab + i]), c2 = to_f(cos[tab + i + half]);
    float s1 = to_f(sin[tab + i]), s2 = to_f(sin[tab + i + half]);
    if (!backward) {
      float x1 = to_f(x[rows + i]), x2 = to_f(x[rows + i + half]);
      y[heads + i] = from_f<T>(x1 * c1 - x2 * s1);
      y[heads + i + half] = from_f<T>(x2 * c2 + x1 * s2);
    } else {
      float d1 = to_f(x[heads + i]), d2 = to_f(x[heads + i + half]);
      y[rows + i] = from_f<T>(d1 * c1 + d2 * s2);
      y[rows + i + half] = from_f<T>(d2 * c2 - d1 * s1);
    }
  }
}

#define ROPE(T, NAME)                                                                                      \
  extern "C" __global__ void rope_fwd_##NAME(const T *x, const T *cos, const T *sin, T *y, int B, int Tn, \
                                             int H, int D) {                                              \
    rope<T>(x, cos, sin, y, B, Tn, H, D, false);                                                          \
  }                                                                                                       \
  extern "C" __global__ void rope_bwd_##NAME(const T *dy, const T *cos, const T *sin, T *dx, int B,       \
                                             int Tn, int H, int D) {                                      \
    rope<T>(dy, cos, sin, dx, B, Tn, H, D, true);                                                         \
  }
INSTANTIATE_FLOAT_TYPES(ROPE)
