// Next-token cross-entropy over one chunk of LM-head logits [rows, V] (the chunking keeps the full
// [tokens, vocab] matrix from ever existing). One block per row: an online max/sum pass gives the
// log-sum-exp, then (when asked) a second pass writes d(scale · nll)/dlogits = scale · (softmax − onehot).
// targets: u32 per row, 0xFFFFFFFF = ignored row (nll 0, gradient 0).
#include "common.cuh"

template <typename T>
__device__ void ce(const T *logits, const uint32_t *targets, float *nll, T *dlogits, int V, float scale) {
  size_t row = blockIdx.x;
  const T *x = logits + row * V;
  uint32_t t = targets[row];
  if (t == 0xFFFFFFFFu) {
    if (threadIdx.x == 0) nll[row] = 0.f;
    if (dlogits)
      for (int j = threadIdx.x; j < V; j += blockDim.x) dlogits[row * V + j] = from_f<T>(0.f);
    return;
  }
  float m = -INFINITY, s = 0.f;
  for (int j = threadIdx.x; j < V; j += blockDim.x) {
    float v = to_f(x[j]);
    if (v > m) {
      s = (m == -INFINITY ? 0.f : s * __expf(m - v)) + 1.f;
      m = v;
    } else {
      s += __expf(v - m);
    }
  }
  block_lse(m, s);
  float lse = m + logf(s);
  if (threadIdx.x == 0) nll[row] = lse - to_f(x[t]);
  if (dlogits)
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
      float p = __expf(to_f(x[j]) - lse);
      dlogits[row * V + j] = from_f<T>((p - (j == (int)t ? 1.f : 0.f)) * scale);
    }
}

#define CE(T, NAME)                                                                                        \
  extern "C" __global__ void ce_##NAME(const T *logits, const uint32_t *targets, float *nll, T *dlogits,   \
                                       int V, float scale) {                                              \
    ce<T>(logits, targets, nll, dlogits, V, scale);                                                       \
  }
INSTANTIATE_FLOAT_TYPES(CE)
