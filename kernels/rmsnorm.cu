// RMSNorm forward/backward, one block per row, f32 statistics (y = x·rstd·(w + offset)).
// The forward optionally fuses the residual add that precedes the norm in a pre-norm decoder
// (x = a + b, written out because the next residual needs it); the backward optionally adds the
// residual's gradient, so `dx = dadd + d norm(x)/dx` leaves in one pass.
#include "common.cuh"

template <typename T>
__device__ void rmsnorm_fwd(const T *x, const T *res, const T *w, T *y, T *xsum, float *rstd, int H,
                            float offset, float eps) {
  size_t row = blockIdx.x;
  const T *xr = x + row * H;
  float ss = 0.f;
  for (int i = threadIdx.x; i < H; i += blockDim.x) {
    float v = to_f(xr[i]);
    if (res) {
      T s = from_f<T>(v + to_f(res[row * H + i]));  // rounded like the unfused add
      xsum[row * H + i] = s;
      v = to_f(s);
    }
    ss += v * v;
  }
  ss = block_sum(ss);
  float r = rsqrtf(ss / H + eps);
  if (threadIdx.x == 0) rstd[row] = r;
  const T *src = res ? xsum + row * H : xr;
  for (int i = threadIdx.x; i < H; i += blockDim.x)
    y[row * H + i] = from_f<T>(to_f(src[i]) * r * (to_f(w[i]) + offset));
}

template <typename T>
__device__ void rmsnorm_bwd(const T *dy, const T *x, const T *w, const float *rstd, const T *dadd, T *dx,
                            int H, float offset) {
  size_t row = blockIdx.x;
  float r = rstd[row];
  float dot = 0.f;
  for (int i = threadIdx.x; i < H; i += blockDim.x) {
    float g = to_f(dy[row * H + i]) * (to_f(w[i]) + offset);
    dot += g * to_f(x[row * H + i]) * r;
  }
  float proj = block_sum(dot) / H;
  for (int i = threadIdx.x; i < H; i += blockDim.x) {
    float g = to_f(dy[row * H + i]) * (to_f(w[i]) + offset);
    float xhat = to_f(x[row * H + i]) * r;
    float v = r * (g - xhat * proj);
    if (dadd) v += to_f(dadd[row * H + i]);
    dx[row * H + i] = from_f<T>(v);
  }
}

#define RMSNORM(T, NAME)                                                                                   \
  extern "C" __global__ void rmsnorm_fwd_##NAME(const T *x, const T *res, const T *w, T *y, T *xsum,      \
                                                float *rstd, int H, float offset, float eps) {            \
    rmsnorm_fwd<T>(x, res, w, y, xsum, rstd, H, offset, eps);                                             \
  }                                                                                                       \
  extern "C" __global__ void rmsnorm_bwd_##NAME(const T *dy, const T *x, const T *w, const float *rstd,   \
                                                const T *dadd, T *dx, int H, float offset) {              \
    rmsnorm_bwd<T>(dy, x, w, rstd, dadd, dx, H, offset);                                                  \
  }
INSTANTIATE_FLOAT_TYPES(RMSNORM)
