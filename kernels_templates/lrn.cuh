// Local response normalisation across channels, y = x / (KB + ALPHA / SIZE * sum x^2)^BETA
// over a window of SIZE channels centred on the channel (PyTorch's convention), clipped to
// the channel's group of CG = C / GROUPS channels (the towers of a split network). Cfg
// gives C, HW (pixels per channel), SIZE, GROUPS, ALPHA, BETA and KB.
#ifndef ALEXNET_LRN_CUH
#define ALEXNET_LRN_CUH

#include "pool.cuh"

// The normalised value's product, rounded on its own: never contracted into a later add
// (an average pooling's), so that the fused stage gives the separate stages' bits.
#ifdef ALEXNET_HOST_EMULATION
#define ALEXNET_LRN_MUL(a, b) ((a) * (b))
#else
#define ALEXNET_LRN_MUL(a, b) __fmul_rn(a, b)
#endif

// lrn_at<Cfg>: the normalised value of channel c at one pixel, col pointing at channel 0
// of that pixel of one image (channels HW apart). lrn_fwd and lrn_pool_fwd both call it,
// so the fused stage computes the same bits as the two separate ones.
template <class Cfg>
__device__ __forceinline__ float lrn_at(const float* __restrict__ col, int c) {
    constexpr int C = Cfg::C, HW = Cfg::HW, SIZE = Cfg::SIZE, HALF = SIZE / 2, GROUPS = Cfg::GROUPS;
    constexpr int CG = C / GROUPS;
    constexpr float ALPHA = Cfg::ALPHA(), BETA = Cfg::BETA(), KB = Cfg::KB();
    const int lo = (c / CG) * CG, hi = lo + CG - 1;
    const int from = c - HALF > lo ? c - HALF : lo, to = c + HALF < hi ? c + HALF : hi;
    float s = 0.f;
    for (int j = from; j <= to; ++j) {
        const float v = col[(size_t)j * HW];
        s = fmaf(v, v, s);
    }
    const float t = KB + (ALPHA / SIZE) * s;
    // t^-0.75 as two square roots when beta is 0.75 (the paper's value); powf otherwise.
    const float scale = BETA == 0.75f ? 1.f / (sqrtf(t) * sqrtf(sqrtf(t))) : powf(t, -BETA);
    return ALEXNET_LRN_MUL(col[(size_t)c * HW], scale);
}

// lrn_fwd<Cfg>: the forward pass, one thread per element; grid x = ceil(batch * C * HW /
// THREADS).
template <class Cfg>
__device__ __forceinline__ void lrn_fwd(const float* __restrict__ x, float* __restrict__ y,
                                        int batch) {
    constexpr int C = Cfg::C, HW = Cfg::HW;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= batch * C * HW) return;
    const int hw = i % HW, c = (i / HW) % C, n = i / (C * HW);
    y[i] = lrn_at<Cfg>(x + (size_t)n * C * HW + hw, c);
}

// lrn_pool_fwd<Cfg>: the LRN and the pooling after it in one pass (inference: the
// normalised values are never stored in global memory). The pooling's Cfg gives H x W
// (H * W == HW), the output P x Q, a K x K window every STRIDE pixels, MAX. Both forms
// normalise each pixel through lrn_at, as lrn_fwd does, and pool in pool_fwd's order:
// the separate stages' bits.
// - Cfg::PLANE (a plane fits in shared memory): one block per (image, channel); its
//   threads normalise the plane once into shared memory, then pool it. Grid x =
//   batch * C, THREADS threads a block.
// - otherwise one thread per pooled element, normalising the pixels of its window itself
//   (overlapping windows normalise a pixel more than once). Grid x =
//   ceil(batch * C * P * Q / THREADS).
template <class Cfg>
__device__ __forceinline__ void lrn_pool_fwd(const float* __restrict__ x, float* __restrict__ y,
                                             int batch) {
    constexpr int C = Cfg::C, HW = Cfg::HW, W = Cfg::W, P = Cfg::P, Q = Cfg::Q;
    constexpr int K = Cfg::K, S = Cfg::STRIDE;
    constexpr bool MAX = Cfg::MAX;
    static_assert(Cfg::H * W == HW, "the pooling reads the LRN's planes");
    if constexpr (Cfg::PLANE) {
        __shared__ float plane[HW];
        const int nc = blockIdx.x;
        if (nc >= batch * C) return;  // the whole block
        const int c = nc % C, n = nc / C;
        const float* image = x + (size_t)n * C * HW;
        for (int i = threadIdx.x; i < HW; i += Cfg::THREADS) plane[i] = lrn_at<Cfg>(image + i, c);
        __syncthreads();
        for (int o = threadIdx.x; o < P * Q; o += Cfg::THREADS) {
            const int q = o % Q, p = o / Q;
            const float* win = plane + (p * S) * W + q * S;
            y[(size_t)nc * P * Q + o] =
                pool_window<K, MAX>([&](int ky, int kx) { return win[ky * W + kx]; });
        }
    } else {
        const int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i >= batch * C * P * Q) return;
        const int q = i % Q, p = (i / Q) % P, c = (i / (P * Q)) % C, n = i / (C * P * Q);
        const float* image = x + (size_t)n * C * HW + (p * S) * W + q * S;
        y[i] = pool_window<K, MAX>(
            [&](int ky, int kx) { return lrn_at<Cfg>(image + ky * W + kx, c); });
    }
}

// lrn_bwd<Cfg>: the gradient. With s_i = KB + ALPHA/SIZE * sum_{j in N(i)} x_j^2
// and y_i = x_i s_i^-BETA (windows clipped to the channel's group of CG channels):
//   dx_c = dy_c s_c^-BETA - 2 ALPHA/SIZE BETA x_c sum_{i in N(c)} dy_i x_i s_i^(-BETA-1)
// One thread per element: it loads the 2 SIZE - 1 channels around its own once and
// recomputes the SIZE window sums it needs from them.
// Grid x = ceil(batch * C * HW / THREADS). dx is overwritten.
// No loops with clipped bounds here: an earlier form looped j over [max(c-HALF, lo),
// min(c+HALF, hi)] and each window over its own clipped range. With lo/hi known only at
// run time (split nets) and SIZE 3, NVVM writes a trip count as max(max(a, -b), c), which
// ptxas 13.0.88 fuses into one sm_90 VIMNMX3 *without the minus*: every window summed one
// channel (wrong on the H200, right under tests/cuda_emulated.rs, which never runs ptxas;
// docs/reliability.md has the evidence). Keep every bound a constant and zero-pad outside
// the tower instead of clipping.
template <class Cfg>
__device__ __forceinline__ void lrn_bwd(const float* __restrict__ x,
                                        const float* __restrict__ dy, float* __restrict__ dx,
                                        int batch) {
    constexpr int C = Cfg::C, HW = Cfg::HW, SIZE = Cfg::SIZE, HALF = SIZE / 2, GROUPS = Cfg::GROUPS;
    constexpr int CG = C / GROUPS;
    constexpr float ALPHA = Cfg::ALPHA(), BETA = Cfg::BETA(), KB = Cfg::KB(), A = ALPHA / SIZE;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= batch * C * HW) return;
    const int hw = i % HW, c = (i / HW) % C, n = i / (C * HW);
    const int lo = (c / CG) * CG, hi = lo + CG - 1;
    const float* xc = x + (size_t)n * C * HW + hw;
    const float* gc = dy + (size_t)n * C * HW + hw;
    // Channels c - 2 HALF .. c + 2 HALF (every x a window sum below needs), zero outside
    // the channel's group: a window clipped to the group sums the same.
    float xs[4 * HALF + 1];
#pragma unroll
    for (int d = 0; d <= 4 * HALF; ++d) {
        const int j = c - 2 * HALF + d;
        xs[d] = (j >= lo && j <= hi) ? xc[(size_t)j * HW] : 0.f;
    }
    float cross = 0.f, sc = 1.f;
#pragma unroll
    for (int e = 0; e <= 2 * HALF; ++e) {
        // j = c - HALF + e, whose window is xs[e .. e + 2 HALF].
        const int j = c - HALF + e;
        float s = 0.f;
#pragma unroll
        for (int d = e; d <= e + 2 * HALF; ++d) s = fmaf(xs[d], xs[d], s);
        s = KB + A * s;
        if (e == HALF) sc = s;
        if (j >= lo && j <= hi)
            cross += gc[(size_t)j * HW] * xs[e + HALF] * powf(s, -BETA - 1.f);
    }
    dx[i] = gc[(size_t)c * HW] * powf(sc, -BETA) - 2.f * A * BETA * xs[2 * HALF] * cross;
}
#endif  // ALEXNET_LRN_CUH
