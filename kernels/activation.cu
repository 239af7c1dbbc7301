// Gated-MLP nonlinearity h = act(g) ⊙ u and its backward, element-wise in f32.
// act: 0 = SiLU (SwiGLU), 1 = tanh-approximated GELU (Gemma's GeGLU), 2 = erf GELU.
#include "common.cuh"

__device__ __forceinline__ void act_and_grad(float g, int act, float &a, float &da) {
  if (act == 0) {
    float s = 1.f / (1.f + __expf(-g));
    a = g * s;
    da = s * (1.f + g * (1.f - s));
  } else if (act == 1) {
    const float K = 0.7978845608028654f, C = 0.044715f;
    float inner = K * (g + C * g * g * g);
    float t = tanhf(inner);
    a = 0.5f * g * (1.f + t);
    da = 0.5f * (1.f + t) + 0.5f * g * (1.f - t * t) * K * (1.f + 3.f * C * g * g);
  } else {
    float cdf = 0.5f * (1.f + erff(g * 0.7071067811865476f));
    a = g * cdf;
    da = cdf + g * 0.3989422804014327f * __expf(-0.5f * g * g);
  }
}

// With `vec` (every pointer 16-byte aligned) threads take 8 elements per 16-byte access; the tail and
// unaligned tensors go element by element.
template <typename T>
__device__ void glu_fwd(const T *g, const T *u, T *h, size_t n, int act, int vec) {
  size_t start = 0, tid = blockIdx.x * (size_t)blockDim.x + threadIdx.x, stride = (size_t)gridDim.x * blockDim.x;
  if (vec) {
    for (size_t v = tid; v < n / 8; v += stride) {
      float gg[8], uu[8];
      load8(g + v * 8, gg);
      load8(u + v * 8, uu);
#pragma unroll
      for (int e = 0; e < 8; e++) {
        float a, da;
        act_and_grad(gg[e], act, a, da);
        gg[e] = a * uu[e];
      }
      store8(h + v * 8, gg);
    }
    start = n / 8 * 8;
  }
  for (size_t i = start + tid; i < n; i += stride) {
    float a, da;
    act_and_grad(to_f(g[i]), act, a, da);
    h[i] = from_f<T>(a * to_f(u[i]));
  }
}

template <typename T>
__device__ void glu_bwd(const T *dh, const T *g, const T *u, T *dg, T *du, size_t n, int act, int vec) {
  size_t start = 0, tid = blockIdx.x * (size_t)blockDim.x + threadIdx.x, stride = (size_t)gridDim.x * blockDim.x;
  if (vec) {
    for (size_t v = tid; v < n / 8; v += stride) {
      float dd[8], gg[8], uu[8];
      load8(dh + v * 8, dd);
      load8(g + v * 8, gg);
      load8(u + v * 8, uu);
#pragma unroll
      for (int e = 0; e < 8; e++) {
        float a, da;
        act_and_grad(gg[e], act, a, da);
        gg[e] = dd[e] * uu[e] * da;
        uu[e] = dd[e] * a;
      }
      store8(dg + v * 8, gg);
      store8(du + v * 8, uu);
    }
    start = n / 8 * 8;
  }
  for (size_t i = start + tid; i < n; i += stride) {
    float a, da, d = to_f(dh[i]);
    act_and_grad(to_f(g[i]), act, a, da);
    du[i] = from_f<T>(d * a);
    dg[i] = from_f<T>(d * to_f(u[i]) * da);
  }
}

#define GLU(T, NAME)                                                                                       \
  extern "C" __global__ void glu_fwd_##NAME(const T *g, const T *u, T *h, size_t n, int act, int vec) {   \
    glu_fwd<T>(g, u, h, n, act, vec);                                                                          \
  }                                                                                                       \
  extern "C" __global__ void glu_bwd_##NAME(const T *dh, const T *g, const T *u, T *dg, T *du, size_t n,  \
                                            int act, int vec) {                                           \
    glu_bwd<T>(dh, g, u, dg, du, n, act, vec);                                                                 \
  }
INSTANTIATE_FLOAT_TYPES(GLU)
