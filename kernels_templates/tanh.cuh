// The hyperbolic tangent, y = tanh(x), one thread per element; grid x = ceil(batch * LEN /
// THREADS). Cfg::LEN is the number of values per image.
#ifndef ALEXNET_TANH_CUH
#define ALEXNET_TANH_CUH

// tanh_fwd<Cfg>: y = tanh(x).
template <class Cfg>
__device__ __forceinline__ void tanh_fwd(const float* __restrict__ x, float* __restrict__ y,
                                         int batch) {
    constexpr int LEN = Cfg::LEN;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < batch * LEN) y[i] = tanhf(x[i]);
}

// tanh_bwd<Cfg>: the gradient from the output y, dx = dy * (1 - y^2).
template <class Cfg>
__device__ __forceinline__ void tanh_bwd(const float* __restrict__ y,
                                         const float* __restrict__ dy, float* __restrict__ dx,
                                         int batch) {
    constexpr int LEN = Cfg::LEN;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= batch * LEN) return;
    const float v = y[i];
    dx[i] = dy[i] * (1.f - v * v);
}
#endif  // ALEXNET_TANH_CUH
