// {{NAME}}: forward of `{{LAYER}}` ({{DESC}}) as an implicit GEMM, f32.
//
// Convolution and fully connected layers share this template (fc is a 1x1 convolution of
// a [I, 1, 1] input). Per group g, with m = (n, p, q) an output pixel and k = (c, ky, kx):
//   y[n, g*OG + o, p, q] = relu?(bias[g*OG + o] + sum_k x[n, g*CG + c, p*S + ky - PAD, q*S + kx - PAD] * w[g*OG + o, c, ky, kx])
// Block: a TM x TN tile of (pixels x output channels), THREADS threads, each an RM x RN
// micro-tile strided by TM/RM and TN/RN so that global stores coalesce along pixels.
// Grid: x = ceil(batch * P * Q / TM), y = ceil(OG / TN), z = G. Every shape and tile size
// is a constant; `batch` is the only run-time size (batch * P * Q must fit an int).
extern "C" __global__ void __launch_bounds__({{THREADS}})
{{NAME}}(const float* __restrict__ x, const float* __restrict__ w,
         const float* __restrict__ bias, float* __restrict__ y, int batch) {
    constexpr int C = {{C}}, H = {{H}}, W = {{W}};
    constexpr int O = {{O}}, P = {{P}}, Q = {{Q}};
    constexpr int R = {{R}}, S = {{STRIDE}}, PAD = {{PAD}}, G = {{GROUPS}};
    constexpr int CG = C / G, OG = O / G, K = CG * R * R, PQ = P * Q;
    constexpr int TM = {{TM}}, TN = {{TN}}, TK = {{TK}}, RM = {{RM}}, RN = {{RN}};
    constexpr int THREADS = (TM / RM) * (TN / RN);
    constexpr bool RELU = {{RELU}};
    static_assert(THREADS == {{THREADS}}, "tile and thread count disagree");

    __shared__ float As[TK][TM];
    __shared__ float Bs[TK][TN];

    const int g = blockIdx.z;
    const int m0 = blockIdx.x * TM, n0 = blockIdx.y * TN;
    const int M = batch * PQ;
    const int tid = threadIdx.x;
    const int tm = tid % (TM / RM), tn = tid / (TM / RM);

    float acc[RM][RN];
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
        for (int j = 0; j < RN; ++j) acc[i][j] = 0.f;

    for (int k0 = 0; k0 < K; k0 += TK) {
        // A tile: the im2col matrix, gathered on the fly (zero outside the image).
        for (int i = tid; i < TK * TM; i += THREADS) {
            const int kk = i / TM, mm = i % TM;
            const int k = k0 + kk, m = m0 + mm;
            float v = 0.f;
            if (k < K && m < M) {
                const int n = m / PQ, pq = m % PQ, p = pq / Q, q = pq % Q;
                const int c = k / (R * R), rs = k % (R * R), ky = rs / R, kx = rs % R;
                const int iy = p * S + ky - PAD, ix = q * S + kx - PAD;
                if (iy >= 0 && iy < H && ix >= 0 && ix < W)
                    v = x[((size_t)(n * C + g * CG + c) * H + iy) * W + ix];
            }
            As[kk][mm] = v;
        }
        // B tile: weights, read along k (contiguous in a weight row).
        for (int i = tid; i < TK * TN; i += THREADS) {
            const int kk = i % TK, nn = i / TK;
            const int k = k0 + kk, o = n0 + nn;
            Bs[kk][nn] = (k < K && o < OG) ? w[(size_t)(g * OG + o) * K + k] : 0.f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TK; ++kk) {
            float a[RM], b[RN];
#pragma unroll
            for (int i = 0; i < RM; ++i) a[i] = As[kk][tm + i * (TM / RM)];
#pragma unroll
            for (int j = 0; j < RN; ++j) b[j] = Bs[kk][tn + j * (TN / RN)];
#pragma unroll
            for (int i = 0; i < RM; ++i)
#pragma unroll
                for (int j = 0; j < RN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }

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
            float v = acc[i][j] + bias[oc];
            if (RELU) v = fmaxf(v, 0.f);
            y[((size_t)n * O + oc) * PQ + pq] = v;
        }
    }
}
