// gemm_bwd_weight<Cfg>: the weight and bias gradients of a convolution or fully connected
// layer as a GEMM, f32, and gemm_bwd_weight_reduce<Cfg>, the ordered sum of its chunks.
// Cfg gives the sizes as gemm_fwd's does, the chunk length CHUNK (split-K) and A_K_FAST /
// B_K_FAST (operands read along K).
//
// Per group g, with row o an output channel of the group, column j = (c, ky, kx) a weight
// of its filter (column KCOL is the bias, whose "input" is 1), and l = (n, p, q) an output
// pixel of the batch:
//   dw[g*OG + o, c, ky, kx] = sum_l dy[n, g*OG + o, p, q] * x[n, g*CG + c, p*S + ky - PAD, q*S + kx - PAD]
//   db[g*OG + o]            = sum_l dy[n, g*OG + o, p, q]
// The sum over l (batch * P * Q terms) is split into chunks of CHUNK: block x takes chunk
// x. With one chunk the block writes dw and db; with several it writes its partial sums
// to ws[chunk][g][o][j] and gemm_bwd_weight_reduce adds the chunks in order
// (deterministic).
// Grid: x = ceil(batch * P * Q / CHUNK), y = ceil(OG / TM) * ceil((KCOL + 1) / TN), z = G.
#ifndef ALEXNET_GEMM_BWD_WEIGHT_CUH
#define ALEXNET_GEMM_BWD_WEIGHT_CUH
#include "gemm_core.cuh"

template <class Cfg>
__device__ __forceinline__ void gemm_bwd_weight(const float* __restrict__ x,
                                                const float* __restrict__ dy,
                                                float* __restrict__ dw, float* __restrict__ db,
                                                float* __restrict__ ws, int batch) {
    constexpr int C = Cfg::C, H = Cfg::H, W = Cfg::W;
    constexpr int O = Cfg::O, P = Cfg::P, Q = Cfg::Q;
    constexpr int R = Cfg::R, S = Cfg::STRIDE, PAD = Cfg::PAD, G = Cfg::GROUPS;
    constexpr int CG = C / G, OG = O / G, KCOL = CG * R * R, PQ = P * Q;
    constexpr int TM = Cfg::TM, TN = Cfg::TN, TK = Cfg::TK, RM = Cfg::RM, RN = Cfg::RN;
    constexpr int CHUNK = Cfg::CHUNK, TILES_M = (OG + TM - 1) / TM;
    static_assert((TM / RM) * (TN / RN) == Cfg::THREADS, "tile and thread count disagree");
    static_assert(Cfg::ELEM_BYTES == sizeof(float), "f32 only: 16-bit GEMMs are not written yet");
    static_assert(Cfg::PIPELINE == 2, "gemm_core.cuh keeps one K step in flight");
    static_assert(CHUNK % TK == 0, "chunks are whole K steps");

    const int g = blockIdx.z;
    const int m0 = (blockIdx.y % TILES_M) * TM, n0 = (blockIdx.y / TILES_M) * TN;
    const int L = batch * PQ;
    const int chunks = (L + CHUNK - 1) / CHUNK;
    const int l_begin = blockIdx.x * CHUNK;
    const int l_end = l_begin + CHUNK < L ? l_begin + CHUNK : L;
    const int tm = threadIdx.x % (TM / RM), tn = threadIdx.x / (TM / RM);

    auto load_a = [&](int l, int mm) -> float {
        const int o = m0 + mm;
        if (o >= OG) return 0.f;
        const int n = l / PQ, pq = l % PQ;
        return dy[((size_t)n * O + g * OG + o) * PQ + pq];
    };
    auto load_b = [&](int l, int nn) -> float {
        const int j = n0 + nn;
        if (j > KCOL) return 0.f;
        if (j == KCOL) return 1.f;
        const int n = l / PQ, pq = l % PQ, p = pq / Q, q = pq % Q;
        const int c = j / (R * R), rs = j % (R * R), ky = rs / R, kx = rs % R;
        const int iy = p * S + ky - PAD, ix = q * S + kx - PAD;
        if (iy < 0 || iy >= H || ix < 0 || ix >= W) return 0.f;
        return x[((size_t)(n * C + g * CG + c) * H + iy) * W + ix];
    };
    float acc[RM][RN] = {};
    gemm_tile<TM, TN, TK, RM, RN, Cfg::A_K_FAST, Cfg::B_K_FAST>(load_a, load_b, l_begin, l_end, acc);

#pragma unroll
    for (int i = 0; i < RM; ++i) {
        const int o = m0 + tm + i * (TM / RM);
        if (o >= OG) continue;
#pragma unroll
        for (int j = 0; j < RN; ++j) {
            const int col = n0 + tn + j * (TN / RN);
            if (col > KCOL) continue;
            if (chunks > 1)
                ws[(((size_t)blockIdx.x * G + g) * OG + o) * (KCOL + 1) + col] = acc[i][j];
            else if (col == KCOL)
                db[g * OG + o] = acc[i][j];
            else
                dw[(size_t)(g * OG + o) * KCOL + col] = acc[i][j];
        }
    }
}

// gemm_bwd_weight_reduce<Cfg>: adds the chunks of gemm_bwd_weight's partial sums, in chunk
// order, into dw and db. One thread per (g, o, j); grid x = ceil(G * OG * (KCOL + 1) /
// 256).
template <class Cfg>
__device__ __forceinline__ void gemm_bwd_weight_reduce(const float* __restrict__ ws,
                                                       float* __restrict__ dw,
                                                       float* __restrict__ db, int batch) {
    constexpr int O = Cfg::O, G = Cfg::GROUPS, OG = O / G;
    constexpr int KCOL = (Cfg::C / G) * Cfg::R * Cfg::R, PQ = Cfg::P * Cfg::Q, CHUNK = Cfg::CHUNK;
    constexpr int E = O * (KCOL + 1);
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= E) return;
    const int chunks = (batch * PQ + CHUNK - 1) / CHUNK;
    float s = 0.f;
    for (int t = 0; t < chunks; ++t) s += ws[(size_t)t * E + e];
    const int oc = e / (KCOL + 1), col = e % (KCOL + 1);
    (void)OG;
    if (col == KCOL)
        db[oc] = s;
    else
        dw[(size_t)oc * KCOL + col] = s;
}
#endif  // ALEXNET_GEMM_BWD_WEIGHT_CUH
