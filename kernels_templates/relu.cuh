// The ReLU, y = max(x, 0), one thread per element; grid x = ceil(batch * LEN / THREADS).
// Cfg::LEN is the number of values per image.
#ifndef ALEXNET_RELU_CUH
#define ALEXNET_RELU_CUH

// relu_fwd<Cfg>: a ReLU that does not follow conv or fc (those apply it in their epilogue).
template <class Cfg>
__device__ __forceinline__ void relu_fwd(const float* __restrict__ x, float* __restrict__ y,
                                         int batch) {
    constexpr int LEN = Cfg::LEN;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < batch * LEN) y[i] = fmaxf(x[i], 0.f);
}

// relu_bwd<Cfg>: the gradient through a ReLU, from its output y: dx = y > 0 ? dy : 0.
template <class Cfg>
__device__ __forceinline__ void relu_bwd(const float* __restrict__ y,
                                         const float* __restrict__ dy, float* __restrict__ dx,
                                         int batch) {
    constexpr int LEN = Cfg::LEN;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= batch * LEN) return;
    dx[i] = y[i] > 0.f ? dy[i] : 0.f;
}

// relu_mask<Cfg>: the same for a ReLU fused into conv or fc, in place on the output
// gradient dy (so dy is not __restrict__).
template <class Cfg>
__device__ __forceinline__ void relu_mask(const float* __restrict__ y, float* dy, int batch) {
    constexpr int LEN = Cfg::LEN;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= batch * LEN) return;
    dy[i] = y[i] > 0.f ? dy[i] : 0.f;
}
#endif  // ALEXNET_RELU_CUH
