// LoRA dropout without a stored mask: keep/drop of element `idx` is a pure function of a 64-bit key
// (seed, step, micro-batch, layer, module) and idx, so backward and activation recomputation redraw the
// same mask, and the CPU reference (src/ops/dropout.rs) draws bit-identical masks.
#include "common.cuh"

__device__ __forceinline__ uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

template <typename T>
__device__ void dropout(const T *x, T *y, size_t n, uint64_t key, float p, float keep_scale) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    float u = (float)(mix64(key ^ (i * 0xD1B54A32D192ED03ull)) >> 40) * (1.f / 16777216.f);
    y[i] = from_f<T>(u < p ? 0.f : to_f(x[i]) * keep_scale);
  }
}

#define DROPOUT(T, NAME)                                                                                   \
  extern "C" __global__ void dropout_##NAME(const T *x, T *y, size_t n, uint64_t key, float p,            \
                                            float keep_scale) {                                           \
    dropout<T>(x, y, n, key, p, keep_scale);                                                              \
  }
INSTANTIATE_FLOAT_TYPES(DROPOUT)
