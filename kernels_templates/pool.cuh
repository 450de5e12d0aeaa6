// Max and average pooling of a C x H x W input to C x P x Q, a K x K window every STRIDE
// pixels, no padding, floor rounding; Cfg::MAX picks max pooling.
#ifndef ALEXNET_POOL_CUH
#define ALEXNET_POOL_CUH

// pool_window<K, MAX>(at): the max (MAX) or the mean of at(ky, kx) over a K x K window,
// in row-major order: pool_fwd's, and the fused LRN and pooling's (lrn.cuh), whose bits
// therefore agree.
template <int K, bool MAX, class At>
__device__ __forceinline__ float pool_window(At at) {
    float acc = MAX ? __int_as_float(0xff800000) : 0.f;  // -inf
#pragma unroll
    for (int ky = 0; ky < K; ++ky)
#pragma unroll
        for (int kx = 0; kx < K; ++kx) {
            const float v = at(ky, kx);
            acc = MAX ? fmaxf(acc, v) : acc + v;
        }
    return MAX ? acc : acc * (1.f / (K * K));
}

// pool_fwd<Cfg>: the forward pass, one thread per output element; grid x =
// ceil(batch * C * P * Q / THREADS).
template <class Cfg>
__device__ __forceinline__ void pool_fwd(const float* __restrict__ x, float* __restrict__ y,
                                         int batch) {
    constexpr int C = Cfg::C, H = Cfg::H, W = Cfg::W, P = Cfg::P, Q = Cfg::Q;
    constexpr int K = Cfg::K, S = Cfg::STRIDE;
    constexpr bool MAX = Cfg::MAX;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= batch * C * P * Q) return;
    const int q = i % Q, p = (i / Q) % P, nc = i / (P * Q);
    const float* plane = x + (size_t)nc * H * W + (p * S) * W + q * S;
    y[i] = pool_window<K, MAX>([&](int ky, int kx) { return plane[ky * W + kx]; });
}

// pool_bwd<Cfg>: the gradient. Gathered, not scattered: one thread per input element adds
// the gradients of the windows that contain it, in window order (the CPU backend's order,
// so sums agree), no atomics.
// Max pooling routes a window's gradient to its first largest element in row-major order.
// Grid x = ceil(batch * C * H * W / THREADS). dx is overwritten.
template <class Cfg>
__device__ __forceinline__ void pool_bwd(const float* __restrict__ x,
                                         const float* __restrict__ dy, float* __restrict__ dx,
                                         int batch) {
    constexpr int C = Cfg::C, H = Cfg::H, W = Cfg::W, P = Cfg::P, Q = Cfg::Q;
    constexpr int K = Cfg::K, S = Cfg::STRIDE;
    constexpr bool MAX = Cfg::MAX;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= batch * C * H * W) return;
    const int w = i % W, h = (i / W) % H, nc = i / (H * W);
    const float* plane = x + (size_t)nc * H * W;
    const float* g = dy + (size_t)nc * P * Q;
    // Windows p with p*S <= h < p*S + K.
    const int p_lo = h >= K ? (h - K) / S + 1 : 0, p_hi = h / S < P - 1 ? h / S : P - 1;
    const int q_lo = w >= K ? (w - K) / S + 1 : 0, q_hi = w / S < Q - 1 ? w / S : Q - 1;
    float acc = 0.f;
    for (int p = p_lo; p <= p_hi; ++p)
        for (int q = q_lo; q <= q_hi; ++q) {
            if (MAX) {
                int best = (p * S) * W + q * S;
                float bv = __int_as_float(0xff800000);  // -inf
#pragma unroll
                for (int ky = 0; ky < K; ++ky)
#pragma unroll
                    for (int kx = 0; kx < K; ++kx) {
                        const int j = (p * S + ky) * W + q * S + kx;
                        if (plane[j] > bv) {
                            bv = plane[j];
                            best = j;
                        }
                    }
                if (best == h * W + w) acc += g[p * Q + q];
            } else {
                acc += g[p * Q + q] * (1.f / (K * K));
            }
        }
    dx[i] = acc;
}
#endif  // ALEXNET_POOL_CUH
