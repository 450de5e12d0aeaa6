// gemm_fwd<Cfg>: the forward pass of a convolution or fully connected layer as an implicit
// GEMM, f32. Cfg (a struct the generated stub defines) gives every size as a constant:
// the input C x H x W, the output O x P x Q, the kernel R x R with STRIDE, PAD and GROUPS,
// the tile TM x TN (RM x RN per thread, K in steps of TK, THREADS threads), the element
// size and K steps in flight it was chosen for (ELEM_BYTES, PIPELINE), and the epilogue
// (BIAS, RELU).
//
// Convolution and fully connected layers share this template (fc is a 1x1 convolution of
// a [I, 1, 1] input). Per group g, with m = (n, p, q) an output pixel and k = (c, ky, kx):
//   y[n, g*OG + o, p, q] = relu?(bias[g*OG + o] + sum_k x[n, g*CG + c, p*S + ky - PAD, q*S + kx - PAD] * w[g*OG + o, c, ky, kx])
// Block: a TM x TN tile of (pixels x output channels) through gemm_tile (gemm_core.cuh).
// Grid: x = ceil(batch * P * Q / TM), y = ceil(OG / TN), z = G. Every shape and tile size
// is a constant; `batch` is the only run-time size (batch * P * Q must fit an int).
#ifndef ALEXNET_GEMM_FWD_CUH
#define ALEXNET_GEMM_FWD_CUH
#include "gemm_core.cuh"

template <class Cfg>
__device__ __forceinline__ void gemm_fwd(const float* __restrict__ x, const float* __restrict__ w,
                                         const float* __restrict__ bias, float* __restrict__ y,
                                         int batch) {
    constexpr int C = Cfg::C, H = Cfg::H, W = Cfg::W;
    constexpr int O = Cfg::O, P = Cfg::P, Q = Cfg::Q;
    constexpr int R = Cfg::R, S = Cfg::STRIDE, PAD = Cfg::PAD, G = Cfg::GROUPS;
    constexpr int CG = C / G, OG = O / G, K = CG * R * R, PQ = P * Q;
    constexpr int TM = Cfg::TM, TN = Cfg::TN, TK = Cfg::TK, RM = Cfg::RM, RN = Cfg::RN;
    constexpr bool BIAS = Cfg::BIAS, RELU = Cfg::RELU;
    static_assert((TM / RM) * (TN / RN) == Cfg::THREADS, "tile and thread count disagree");
    static_assert(Cfg::ELEM_BYTES == sizeof(float), "f32 only: 16-bit GEMMs are not written yet");
    static_assert(Cfg::PIPELINE == 2, "gemm_core.cuh keeps one K step in flight");

    const int g = blockIdx.z;
    const int m0 = blockIdx.x * TM, n0 = blockIdx.y * TN;
    const int M = batch * PQ;
    const int tm = threadIdx.x % (TM / RM), tn = threadIdx.x / (TM / RM);

    // A(k, m): the im2col matrix, gathered on the fly (zero outside the image).
    auto load_a = [&](int k, int mm) -> float {
        const int m = m0 + mm;
        if (m >= M) return 0.f;
        const int n = m / PQ, pq = m % PQ, p = pq / Q, q = pq % Q;
        const int c = k / (R * R), rs = k % (R * R), ky = rs / R, kx = rs % R;
        const int iy = p * S + ky - PAD, ix = q * S + kx - PAD;
        if (iy < 0 || iy >= H || ix < 0 || ix >= W) return 0.f;
        return x[((size_t)(n * C + g * CG + c) * H + iy) * W + ix];
    };
    // B(k, o): weights, contiguous along k.
    auto load_b = [&](int k, int nn) -> float {
        const int o = n0 + nn;
        return o < OG ? w[(size_t)(g * OG + o) * K + k] : 0.f;
    };
    float acc[RM][RN] = {};
    gemm_tile<TM, TN, TK, RM, RN, false, true>(load_a, load_b, 0, K, acc);

    // Epilogue: bias, the fused ReLU, NCHW store.
#pragma unroll
    for (int i = 0; i < RM; ++i) {
        const int m = m0 + tm + i * (TM / RM);
        if (m >= M) continue;
        const int n = m / PQ, pq = m % PQ;
#pragma unroll
        for (int j = 0; j < RN; ++j) {
            const int o = n0 + tn + j * (TN / RN);
            if (o >= OG) continue;
            const int oc = g * OG + o;
            float v = BIAS ? acc[i][j] + bias[oc] : acc[i][j];
            if (RELU) v = fmaxf(v, 0.f);
            y[((size_t)n * O + oc) * PQ + pq] = v;
        }
    }
}
#endif  // ALEXNET_GEMM_FWD_CUH
