// gemm_bwd_data<Cfg>: the input gradient of a convolution or fully connected layer as an
// implicit GEMM, f32. Cfg gives the sizes as gemm_fwd's does (B_K_FAST: the weights are
// read along K, for kernels wider than 1x1).
//
// Per group g, with m = (n, h, w) an input pixel, column c an input channel of the group
// and k = (o, ky, kx):
//   dx[n, g*CG + c, h, w] = sum_k dy[n, g*OG + o, p, q] * w[g*OG + o, c, ky, kx]
// where p*S + ky - PAD = h and q*S + kx - PAD = w (terms with no such whole p, q in range
// are zero). fc is the 1x1 case. `dy` is the gradient after the fused ReLU's mask.
// Grid: x = ceil(batch * H * W / TM), y = ceil(CG / TN), z = G. dx is overwritten.
#ifndef ALEXNET_GEMM_BWD_DATA_CUH
#define ALEXNET_GEMM_BWD_DATA_CUH
#include "gemm_core.cuh"

template <class Cfg>
__device__ __forceinline__ void gemm_bwd_data(const float* __restrict__ dy,
                                              const float* __restrict__ w,
                                              float* __restrict__ dx, int batch) {
    constexpr int C = Cfg::C, H = Cfg::H, W = Cfg::W;
    constexpr int O = Cfg::O, P = Cfg::P, Q = Cfg::Q;
    constexpr int R = Cfg::R, S = Cfg::STRIDE, PAD = Cfg::PAD, G = Cfg::GROUPS;
    constexpr int CG = C / G, OG = O / G, K = OG * R * R, HW = H * W, PQ = P * Q;
    constexpr int TM = Cfg::TM, TN = Cfg::TN, TK = Cfg::TK, RM = Cfg::RM, RN = Cfg::RN;
    static_assert((TM / RM) * (TN / RN) == Cfg::THREADS, "tile and thread count disagree");
    static_assert(Cfg::ELEM_BYTES == sizeof(float), "f32 only: 16-bit GEMMs are not written yet");
    static_assert(Cfg::PIPELINE == 2, "gemm_core.cuh keeps one K step in flight");

    const int g = blockIdx.z;
    const int m0 = blockIdx.x * TM, n0 = blockIdx.y * TN;
    const int M = batch * HW;
    const int tm = threadIdx.x % (TM / RM), tn = threadIdx.x / (TM / RM);

    auto load_a = [&](int k, int mm) -> float {
        const int m = m0 + mm;
        if (m >= M) return 0.f;
        const int n = m / HW, hw = m % HW, h = hw / W, ww = hw % W;
        const int o = k / (R * R), rs = k % (R * R), ky = rs / R, kx = rs % R;
        const int py = h + PAD - ky, px = ww + PAD - kx;
        if (py < 0 || px < 0 || py % S != 0 || px % S != 0) return 0.f;
        const int p = py / S, q = px / S;
        if (p >= P || q >= Q) return 0.f;
        return dy[((size_t)n * O + g * OG + o) * PQ + p * Q + q];
    };
    auto load_b = [&](int k, int nn) -> float {
        const int c = n0 + nn;
        if (c >= CG) return 0.f;
        const int o = k / (R * R), rs = k % (R * R);
        return w[((size_t)(g * OG + o) * CG + c) * (R * R) + rs];
    };
    float acc[RM][RN] = {};
    gemm_tile<TM, TN, TK, RM, RN, false, Cfg::B_K_FAST>(load_a, load_b, 0, K, acc);

#pragma unroll
    for (int i = 0; i < RM; ++i) {
        const int m = m0 + tm + i * (TM / RM);
        if (m >= M) continue;
        const int n = m / HW, hw = m % HW;
#pragma unroll
        for (int j = 0; j < RN; ++j) {
            const int c = n0 + tn + j * (TN / RN);
            if (c < CG) dx[((size_t)n * C + g * CG + c) * HW + hw] = acc[i][j];
        }
    }
}
#endif  // ALEXNET_GEMM_BWD_DATA_CUH
