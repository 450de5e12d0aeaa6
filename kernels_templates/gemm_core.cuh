// The tiled GEMM core shared by every generated GEMM kernel (forward, data gradient,
// weight gradient). A block accumulates a TM x TN tile of C = A^T B over k in
// [k_begin, k_end): acc[i][j] += sum_k A(k, row i) * B(k, col j). The operands are not
// matrices in memory but functions (`load_a(k, mm)`, `load_b(k, nn)` with mm, nn the
// row/column inside the tile), so each kernel gathers them from its tensors: im2col on the
// fly for convolutions, a strided view for fully connected layers. A_K_FAST / B_K_FAST
// pick which index consecutive threads walk when loading a tile, so that the loads
// coalesce along whichever index is contiguous in memory. THREADS = (TM/RM) * (TN/RN);
// thread t owns rows t % (TM/RM) + i * (TM/RM) and columns t / (TM/RM) + j * (TN/RN).
#ifndef ALEXNET_GEMM_CORE
#define ALEXNET_GEMM_CORE
template <int TM, int TN, int TK, int RM, int RN, bool A_K_FAST, bool B_K_FAST, class LoadA,
          class LoadB>
__device__ __forceinline__ void gemm_tile(LoadA load_a, LoadB load_b, int k_begin, int k_end,
                                          float (&acc)[RM][RN]) {
    constexpr int THREADS = (TM / RM) * (TN / RN);
    __shared__ float As[TK][TM];
    __shared__ float Bs[TK][TN];
    const int tid = threadIdx.x;
    const int tm = tid % (TM / RM), tn = tid / (TM / RM);
    // Software pipelining: the next K step's operands are fetched from global memory into
    // registers while the current step computes from shared memory.
    constexpr int A_PER = (TK * TM + THREADS - 1) / THREADS, B_PER = (TK * TN + THREADS - 1) / THREADS;
    float ra[A_PER], rb[B_PER];
    auto fetch = [&](int k0) {
#pragma unroll
        for (int r = 0; r < A_PER; ++r) {
            const int i = tid + r * THREADS;
            const int kk = A_K_FAST ? i % TK : i / TM, mm = A_K_FAST ? i / TK : i % TM;
            ra[r] = (i < TK * TM && k0 + kk < k_end) ? load_a(k0 + kk, mm) : 0.f;
        }
#pragma unroll
        for (int r = 0; r < B_PER; ++r) {
            const int i = tid + r * THREADS;
            const int kk = B_K_FAST ? i % TK : i / TN, nn = B_K_FAST ? i / TK : i % TN;
            rb[r] = (i < TK * TN && k0 + kk < k_end) ? load_b(k0 + kk, nn) : 0.f;
        }
    };
    if (k_begin < k_end) fetch(k_begin);
    for (int k0 = k_begin; k0 < k_end; k0 += TK) {
#pragma unroll
        for (int r = 0; r < A_PER; ++r) {
            const int i = tid + r * THREADS;
            if (i < TK * TM) As[A_K_FAST ? i % TK : i / TM][A_K_FAST ? i / TK : i % TM] = ra[r];
        }
#pragma unroll
        for (int r = 0; r < B_PER; ++r) {
            const int i = tid + r * THREADS;
            if (i < TK * TN) Bs[B_K_FAST ? i % TK : i / TN][B_K_FAST ? i / TK : i % TN] = rb[r];
        }
        __syncthreads();
        if (k0 + TK < k_end) fetch(k0 + TK);
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
}
#endif  // ALEXNET_GEMM_CORE
