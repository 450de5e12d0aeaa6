// gemm_mma_{bf16,f16,tf32,bf16r,f16r}<Cfg>: a GEMM on tensor cores (mma.sync, mma.cuh) with f32
// accumulators:
//   c[m, n] = relu?(bias?[n] + sum_k a[m, k] * b[n, k])     m < batch * ROWS, n < N, k < K
// a is M x K and b is N x K, both row-major with K contiguous (b is the K x N operand in
// column-major order: the layout of a fully connected layer's weights [out][in]); c is
// M x N row-major, f32. bf16 and f16 read 16-bit a and b; tf32 reads f32 and rounds each
// value to tf32 (cvt.rna) before the product; bf16r reads f32 and rounds each value to
// bf16 (to nearest, ties to even: bf16_pair) as its threads stage it in shared memory, so
// that its products are bf16 x bf16 on f32 storage (--precision bf16, whose activations
// between stages stay f32); f16r the same with f16 (f16_pair; --precision f16).
//
// Cfg: the sizes ROWS (rows per image: M = batch * ROWS), N, K; the block tile BM x BN, K
// in steps of BK; WARPS_M x WARPS_N warps, each a (BM / WARPS_M) x (BN / WARPS_N) tile of
// 16 x 8 mma tiles; STAGES K steps in flight (a multi-stage cp.async pipeline); THREADS
// and ELEM_BYTES (checked against the above); the epilogue's BIAS and RELU; SPLIT, the
// split-K parts (1: none; see below).
//
// Constraint: each row of a and b must start 16 bytes after the previous one (K * element
// size a multiple of 16: K % 8 == 0 in 16 bits, K % 4 == 0 in f32), and a and b 16-byte
// aligned, so that every 16-byte chunk of a row is one cp.async; the spec refuses other K,
// except where the threads read the operands themselves: a convolution's (conv_mma_tf32,
// conv_mma_bf16r, conv_mma_f16r: the im2col tile gathered, the weights' copied or
// gathered; the gradients' conv_mma_dgrad_* and conv_mma_wgrad_*: both tiles gathered)
// and bf16r's and f16r's (two 16-byte loads a chunk of 8 values where K % 8 == 0, 8 loads
// of one value otherwise).
// Rows past M or N and chunks past K are zero-filled, so M, N and K need not be multiples
// of the tile.
//
// Shared memory: per stage, a BM x BK tile of a and a BN x BK tile of b, each row as
// BK * ELEM_BYTES / 16 chunks of 16 bytes stored XOR-swizzled (chunk c of row r at
// c ^ ((r / SW) % CH)) so that the eight rows one ldmatrix phase reads lie in distinct
// banks. Fragments come from ldmatrix.x4 (four 8x8 matrices of 16-bit values, which are
// also 8x4 matrices of f32: the tf32 fragments have the same shape in 32-bit words).
// Grid: x = ceil(M / BM), y = ceil(N / BN), z = SPLIT.
//
// Split-K (SPLIT > 1, gemm_mma_split_tf32, _bf16r and _f16r): block z sums the K steps
// [z * KTS, (z + 1) * KTS) of the KT = ceil(K / BK) steps (KTS = ceil(KT / SPLIT)) and
// writes its partial sums, without bias or ReLU, to slice z of a workspace of SPLIT x M x N;
// gemm_mma_reduce then adds the slices in order z = 0, 1, ... (the same sum on every run:
// deterministic), the bias and the ReLU. For a GEMM with few output tiles (a fully
// connected layer at a small batch), so that the grid fills the GPU.
//
// The device functions below name the operands as a layer does: a is the input x, b the
// weights w, c the output y (a fully connected layer's forward pass with --precision
// tf32); a convolution's input gradient (conv_mma_dgrad_*) reads dy and w and writes dx.
#ifndef ALEXNET_GEMM_MMA_CUH
#define ALEXNET_GEMM_MMA_CUH
#ifndef ALEXNET_HOST_EMULATION
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif
#include "mma.cuh"

// Which mma a GEMM issues, with its K per instruction and bytes per element.
enum MmaKind : int { MMA_TF32, MMA_F16, MMA_BF16 };

// Two f32 values rounded to bf16 (to nearest, ties to even; a NaN stays a quiet NaN with
// its sign) in one word, `lo` in the low half: the rounding of the CPU backend's bf16
// (cpu::packed::bf16_bits), bit for bit, so that both products are the same.
__device__ __forceinline__ unsigned bf16_bits(float f) {
    const unsigned b = __float_as_uint(f);
    if ((b & 0x7fffffffu) > 0x7f800000u) return (b >> 16) | 0x40u;
    return (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
}
__device__ __forceinline__ unsigned bf16_pair(float lo, float hi) {
    return bf16_bits(lo) | (bf16_bits(hi) << 16);
}

template <int KIND>
struct MmaOp;

template <>
struct MmaOp<MMA_BF16> {
    enum : int { KSTEP = 16, ELEM_BYTES = 2 };
    template <int R>
    static __device__ __forceinline__ void prepare(unsigned (&)[R]) {}
    static __device__ __forceinline__ void run(float (&d)[4], const unsigned (&a)[4],
                                               const unsigned (&b)[2]) {
        mma_m16n8k16_bf16(d, a, b);
    }
};

template <>
struct MmaOp<MMA_F16> {
    enum : int { KSTEP = 16, ELEM_BYTES = 2 };
    template <int R>
    static __device__ __forceinline__ void prepare(unsigned (&)[R]) {}
    static __device__ __forceinline__ void run(float (&d)[4], const unsigned (&a)[4],
                                               const unsigned (&b)[2]) {
        mma_m16n8k16_f16(d, a, b);
    }
};

template <>
struct MmaOp<MMA_TF32> {
    enum : int { KSTEP = 8, ELEM_BYTES = 4 };
    // Rounds a fragment of f32 values to tf32.
    template <int R>
    static __device__ __forceinline__ void prepare(unsigned (&f)[R]) {
#pragma unroll
        for (int i = 0; i < R; ++i) f[i] = to_tf32(f[i]);
    }
    static __device__ __forceinline__ void run(float (&d)[4], const unsigned (&a)[4],
                                               const unsigned (&b)[2]) {
        mma_m16n8k8_tf32(d, a, b);
    }
};

// An f32 value rounded to f16 (to nearest, ties to even; overflow to infinity, f16
// subnormals kept, a NaN stays a quiet NaN with its sign), as the bits of an f16 in the
// low half: what half::f16::from_f32 and __float2half_rn give (but for NaN payloads),
// written out so that the host emulation computes it too.
__device__ __forceinline__ unsigned f16_bits(float f) {
    const unsigned x = __float_as_uint(f);
    const unsigned sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return sign | 0x7e00u;
    // 65520 and beyond round to infinity (65504 is the largest f16).
    if (ax >= 0x477ff000u) return sign | 0x7c00u;
    if (ax >= 0x38800000u) {
        // A normal f16 (2^-14 and beyond): the exponent rebiased, 13 bits rounded off; a
        // carry out of the mantissa steps the exponent, as it should.
        const unsigned r = ax - 0x38000000u;
        return sign | ((r + 0xfffu + ((r >> 13) & 1u)) >> 13);
    }
    // Below 2^-25 (and 2^-25 itself, a tie with the even zero): zero.
    if (ax <= 0x33000000u) return sign;
    // A subnormal f16, k units of 2^-24: the mantissa with its leading one, shifted by
    // 126 - exponent (14 to 24 bits), rounded; k = 1024 is the smallest normal's bits.
    const unsigned e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u, sh = 126u - e;
    return sign | ((m + (1u << (sh - 1)) - 1u + ((m >> sh) & 1u)) >> sh);
}
__device__ __forceinline__ unsigned f16_pair(float lo, float hi) {
    return f16_bits(lo) | (f16_bits(hi) << 16);
}

// Stores a chunk of a tile row whose f32 value j is value(j) (j < 16 / bytes of KIND's
// operands) to dst as KIND's operands: four words of f32 bits (tf32 rounds them after
// ldmatrix) or of bf16 or f16 pairs, each packed as its values come, so that eight values
// are never live at once.
template <int KIND, class Value>
__device__ __forceinline__ void stage_chunk(uint4* dst, const Value& value) {
    unsigned wd[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        if constexpr (KIND == MMA_TF32) {
            wd[j] = __float_as_uint(value(j));
        } else if constexpr (KIND == MMA_F16) {
            wd[j] = f16_pair(value(2 * j), value(2 * j + 1));
        } else {
            wd[j] = bf16_pair(value(2 * j), value(2 * j + 1));
        }
    }
    st_shared_16(dst, uint4{wd[0], wd[1], wd[2], wd[3]});
}

// What the GEMM's operands are: matrices in memory (MMA_MATRIX); a convolution's forward
// pass, whose a is the im2col of its input x (MMA_CONV); its input gradient, whose a is
// the output gradient dy gathered by the transposed convolution and b the filters read
// across output channels (MMA_DGRAD); or its weight and bias gradients, whose a is dy
// and b the im2col of x with a column of ones for the bias, K the batch's output pixels
// in chunks (MMA_WGRAD). A convolution's operands are gathered by the threads, value by
// value.
enum MmaShape : int { MMA_MATRIX, MMA_CONV, MMA_DGRAD, MMA_WGRAD };

// A convolution's input gradient as a GEMM (MMA_DGRAD), per group g: row m = (image n,
// input pixel h, w), column c = a channel of the group, k = (o, ky, kx) with o an output
// channel of the group:
//   dx[n, g*CG + c, h, w] = sum_k dy[n, g*OG + o, p, q] * w[g*OG + o, c, ky, kx]
// where p*S + ky - PAD = h and q*S + kx - PAD = w (no such whole p, q in range: zero), as
// gemm_bwd_data.cuh computes it in f32. dgrad_a is the value of a at (m, k): zero past M
// or K; dgrad_b the value of b at (c, k) in the group's filters wg.
template <class Cfg>
__device__ __forceinline__ float dgrad_a(const float* __restrict__ dyg, int hw, int kk) {
    constexpr int W = Cfg::W, P = Cfg::P, Q = Cfg::Q, R = Cfg::R, S = Cfg::STRIDE;
    constexpr int PAD = Cfg::PAD, O = Cfg::O;
    constexpr int OG = O / Cfg::GROUPS, K = OG * R * R;
    if (kk >= K) return 0.f;
    const int h = hw / W, w = hw % W;
    const int o = kk / (R * R), rs = kk % (R * R);
    const int py = h + PAD - rs / R, px = w + PAD - rs % R;
    if (py < 0 || px < 0 || py % S != 0 || px % S != 0) return 0.f;
    const int p = py / S, q = px / S;
    if (p >= P || q >= Q) return 0.f;
    return dyg[((size_t)o * P + p) * Q + q];
}
template <class Cfg>
__device__ __forceinline__ float dgrad_b(const float* __restrict__ wg, int c, int kk) {
    constexpr int RR = Cfg::R * Cfg::R, CG = Cfg::C / Cfg::GROUPS;
    constexpr int K = Cfg::O / Cfg::GROUPS * RR;
    if (c >= CG || kk >= K) return 0.f;
    return wg[((size_t)(kk / RR) * CG + c) * RR + kk % RR];
}

// A convolution's weight and bias gradients as a GEMM (MMA_WGRAD), per group g: row o = an
// output channel of the group, column j = (c, ky, kx) a weight of its filter (column KCOL
// is the bias, whose input is 1), k = l = (image n, p, q) an output pixel of the batch:
//   dw[g*OG + o, c, ky, kx] = sum_l dy[n, g*OG + o, p, q] * x[n, g*CG + c, p*S + ky - PAD, q*S + kx - PAD]
//   db[g*OG + o]            = sum_l dy[n, g*OG + o, p, q]
// as gemm_bwd_weight.cuh computes it in f32; the sum over l in chunks of CHUNK (block x
// takes chunk x). wgrad_a is dy at (o, l) of group g, wgrad_b the im2col value at (j, l).
template <class Cfg>
__device__ __forceinline__ float wgrad_a(const float* __restrict__ dy, int g, int o, int l) {
    constexpr int O = Cfg::O, OG = O / Cfg::GROUPS, PQ = Cfg::P * Cfg::Q;
    if (o >= OG) return 0.f;
    return dy[((size_t)(l / PQ) * O + g * OG + o) * PQ + l % PQ];
}
template <class Cfg>
__device__ __forceinline__ float wgrad_b(const float* __restrict__ x, int g, int j, int l) {
    constexpr int C = Cfg::C, H = Cfg::H, W = Cfg::W, Q = Cfg::Q, PQ = Cfg::P * Cfg::Q;
    constexpr int R = Cfg::R, S = Cfg::STRIDE, PAD = Cfg::PAD, CG = C / Cfg::GROUPS;
    constexpr int KCOL = CG * R * R;
    if (j > KCOL) return 0.f;
    if (j == KCOL) return 1.f;
    const int n = l / PQ, pq = l % PQ, p = pq / Q, q = pq % Q;
    const int c = j / (R * R), rs = j % (R * R);
    const int iy = p * S + rs / R - PAD, ix = q * S + rs % R - PAD;
    if (iy < 0 || iy >= H || ix < 0 || ix >= W) return 0.f;
    return x[((size_t)(n * C + g * CG + c) * H + iy) * W + ix];
}

// FROM_F32: a and b are f32 in global memory, rounded to KIND's 16-bit type (bf16 or f16)
// as the threads stage them (no cp.async). A convolution (any SHAPE but MMA_MATRIX) reads
// f32 always: tf32, or bf16 or f16 with FROM_F32.
// MMA_WGRAD: the epilogue hands each sum to store(m, n, v) instead of writing c.
struct NoStore {
    __device__ __forceinline__ void operator()(int, int, float) const {}
};

template <class Cfg, int KIND, int SHAPE = MMA_MATRIX, bool FROM_F32 = false, class Store = NoStore>
__device__ __forceinline__ void gemm_mma_core(const void* __restrict__ a_ptr,
                                              const void* __restrict__ b_ptr,
                                              const float* __restrict__ bias,
                                              float* __restrict__ c, int batch,
                                              Store store = {}) {
    constexpr bool CONV = SHAPE != MMA_MATRIX, DGRAD = SHAPE == MMA_DGRAD;
    // MMA_WGRAD: ROWS is the group's output channels (M, whatever the batch), N = KCOL + 1,
    // K = CHUNK (one block's part of the sum over the batch's pixels).
    constexpr bool WGRAD = SHAPE == MMA_WGRAD;
    using Op = MmaOp<KIND>;
    constexpr int E = Op::ELEM_BYTES, KSTEP = Op::KSTEP;
    constexpr int ROWS = Cfg::ROWS, N = Cfg::N, K = Cfg::K;
    constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK, STAGES = Cfg::STAGES;
    constexpr int WARPS_M = Cfg::WARPS_M, WARPS_N = Cfg::WARPS_N;
    constexpr int THREADS = 32 * WARPS_M * WARPS_N;
    constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N, MI = WM / 16, NI = WN / 8;
    constexpr int CPE = 16 / E;    // elements per 16-byte chunk
    constexpr int CH = BK / CPE;   // chunks per tile row
    constexpr int SW = CH >= 8 ? 1 : 8 / CH;  // rows per swizzle phase
    constexpr int KT = (K + BK - 1) / BK;
    constexpr int SPLIT = Cfg::SPLIT, KTS = (KT + SPLIT - 1) / SPLIT;
    constexpr bool BIAS = Cfg::BIAS, RELU = Cfg::RELU;
    static_assert(SPLIT >= 1 && (SPLIT == 1 || (!BIAS && !RELU)),
                  "split-K partial sums take no epilogue (gemm_mma_reduce applies it)");
    static_assert(!FROM_F32 || KIND != MMA_TF32, "f32 operands are rounded to bf16 or f16");
    static_assert(!CONV || ((KIND == MMA_TF32 || FROM_F32) && SPLIT == 1),
                  "a convolution's tiles are f32 (tf32, bf16r or f16r products), not split");
    static_assert(!(DGRAD || WGRAD) || (!BIAS && !RELU), "a gradient has no bias or ReLU");
    static_assert(Cfg::THREADS == THREADS, "THREADS is 32 * WARPS_M * WARPS_N");
    static_assert(Cfg::ELEM_BYTES == E, "ELEM_BYTES disagrees with the mma kind");
    // A convolution whose filters are not whole 16-byte rows (AlexNet's conv1: 363 values)
    // gathers its weights' tile too, and bf16r reads (and rounds) every operand row; every
    // other operand row is copied by cp.async.
    constexpr bool B_ROWS_ALIGNED = K % CPE == 0;
    static_assert(B_ROWS_ALIGNED || CONV || FROM_F32,
                  "rows of a and b must be 16-byte aligned (K * ELEM_BYTES % 16)");
    static_assert(BK % KSTEP == 0 && KSTEP * E == 32, "a K step is two 16-byte chunks");
    static_assert(CH == 2 || CH == 4 || CH == 8, "2, 4 or 8 chunks a tile row");
    static_assert(BM % (16 * WARPS_M) == 0 && BN % (16 * WARPS_N) == 0,
                  "warp tiles are multiples of 16 x 16");
    static_assert(STAGES >= 2, "a pipeline has at least two stages");
    static_assert(STAGES * (BM + BN) * BK * E <= 48 * 1024, "static shared memory is 48 KiB");

    // 16-byte chunks; chunk ch of tile row `row` is at swizzled(row, ch).
    __shared__ __align__(128) uint4 As[STAGES][BM * CH];
    __shared__ __align__(128) uint4 Bs[STAGES][BN * CH];
    auto swizzled = [](int row, int ch) { return row * CH + (ch ^ ((row / SW) % CH)); };

    const char* a = static_cast<const char*>(a_ptr);
    const char* b = static_cast<const char*>(b_ptr);
    const int M = WGRAD ? ROWS : batch * ROWS;
    // MMA_WGRAD: block y is a tile of (rows, columns), block x the chunk of K.
    constexpr int TILES_M = (ROWS + BM - 1) / BM;
    const int m0 = WGRAD ? (blockIdx.y % TILES_M) * BM : blockIdx.x * BM;
    const int n0 = WGRAD ? (blockIdx.y / TILES_M) * BN : blockIdx.y * BN;
    // MMA_WGRAD: this block's values of K, [k_begin, k_end) of the batch's pixels.
    const int k_begin = WGRAD ? blockIdx.x * K : 0;
    const int k_end = [&] {
        if constexpr (WGRAD) {
            const int l = batch * Cfg::P * Cfg::Q;
            return k_begin + K < l ? k_begin + K : l;
        } else {
            return K;
        }
    }();
    // This block's K steps: kt0 .. kt0 + NT - 1 (all of them without split-K).
    const int kt0 = CONV ? 0 : blockIdx.z * KTS;
    const int NT = WGRAD ? (k_end - k_begin + BK - 1) / BK
                         : (KT - kt0 < KTS ? (KT - kt0 > 0 ? KT - kt0 : 0) : KTS);
    // Split-K: this block's slice of the workspace. A convolution: blockIdx.z is the group,
    // whose weights, bias and output channels follow the previous groups' (N x K filter
    // values a group in both passes: OG x CG x R x R).
    if (!CONV) c += (size_t)blockIdx.z * M * N;
    if (CONV && !WGRAD) b += (size_t)blockIdx.z * N * K * (FROM_F32 ? 4 : E);
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int wm0 = (warp % WARPS_M) * WM, wn0 = (warp / WARPS_M) * WN;

    // Reads the CPE f32 values of the row at rowp (K values) from column k into v, zero
    // past K or where !ok: whole 16-byte loads where every chunk of a row is whole.
    auto read_row = [](const float* rowp, bool ok, int k, float (&v)[CPE]) {
        if constexpr (K % CPE == 0) {
#pragma unroll
            for (int q = 0; q < CPE / 4; ++q) {
                const uint4 u = ok ? reinterpret_cast<const uint4*>(rowp + k)[q] : uint4{0, 0, 0, 0};
                v[4 * q] = __uint_as_float(u.x);
                v[4 * q + 1] = __uint_as_float(u.y);
                v[4 * q + 2] = __uint_as_float(u.z);
                v[4 * q + 3] = __uint_as_float(u.w);
            }
        } else {
#pragma unroll
            for (int j = 0; j < CPE; ++j) v[j] = ok && k + j < K ? rowp[k + j] : 0.f;
        }
    };

    // Issues the copies of K step kt into stage s (zero where out of range).
    auto load = [&](int s, int kt) {
        const int k0 = k_begin + kt * BK;
#pragma unroll
        for (int r = 0; r < (BM * CH + THREADS - 1) / THREADS; ++r) {
            const int i = tid + r * THREADS, row = i / CH, ch = i % CH;
            const int m = m0 + row, k = k0 + ch * CPE;
            if (!(BM * CH % THREADS == 0 || i < BM * CH)) continue;
            if constexpr (WGRAD) {
                const float* dy = static_cast<const float*>(a_ptr);
                stage_chunk<KIND>(&As[s][swizzled(row, ch)], [&](int j) {
                    return k + j < k_end ? wgrad_a<Cfg>(dy, blockIdx.z, m, k + j) : 0.f;
                });
            } else if constexpr (DGRAD) {
                // dy of image m / ROWS from the group's first output channel on.
                const int mm = m < M ? m : 0, hw = mm % ROWS;
                const float* dyg = static_cast<const float*>(a_ptr) +
                                   ((size_t)(mm / ROWS) * Cfg::O + blockIdx.z * (Cfg::O / Cfg::GROUPS)) *
                                       (Cfg::P * Cfg::Q);
                stage_chunk<KIND>(&As[s][swizzled(row, ch)],
                               [&](int j) { return m < M ? dgrad_a<Cfg>(dyg, hw, k + j) : 0.f; });
            } else if constexpr (CONV) {
                // The im2col matrix: row m is output pixel (image, p, q), column k is
                // (channel of the group, ky, kx); zero outside the image and past M or K.
                constexpr int C = Cfg::C, H = Cfg::H, W = Cfg::W, Q = Cfg::Q, R = Cfg::R;
                constexpr int S = Cfg::STRIDE, PAD = Cfg::PAD, CG = C / Cfg::GROUPS;
                const float* x = static_cast<const float*>(a_ptr);
                const int img = m / ROWS, pq = m % ROWS, p = pq / Q, q = pq % Q;
                const float* xg = x + (size_t)(img * C + blockIdx.z * CG) * H * W;
                auto at = [&](int kk) {
                    const int ch_ = kk / (R * R), rs = kk % (R * R);
                    const int iy = p * S + rs / R - PAD, ix = q * S + rs % R - PAD;
                    const bool in = m < M && kk < K && iy >= 0 && iy < H && ix >= 0 && ix < W;
                    return in ? xg[((size_t)ch_ * H + iy) * W + ix] : 0.f;
                };
                stage_chunk<KIND>(&As[s][swizzled(row, ch)], [&](int j) { return at(k + j); });
            } else if constexpr (FROM_F32) {
                const bool ok = m < M && k < K;
                float v[CPE];
                read_row(static_cast<const float*>(a_ptr) + (size_t)(ok ? m : 0) * K, ok, k, v);
                stage_chunk<KIND>(&As[s][swizzled(row, ch)], [&](int j) { return v[j]; });
            } else {
                const bool ok = m < M && k < K;
                cp_async_16(&As[s][swizzled(row, ch)], ok ? a + ((size_t)m * K + k) * E : a, ok);
            }
        }
#pragma unroll
        for (int r = 0; r < (BN * CH + THREADS - 1) / THREADS; ++r) {
            const int i = tid + r * THREADS, row = i / CH, ch = i % CH;
            const int n = n0 + row, k = k0 + ch * CPE;
            if (!(BN * CH % THREADS == 0 || i < BN * CH)) continue;
            if constexpr (WGRAD) {
                const float* x = reinterpret_cast<const float*>(b);
                stage_chunk<KIND>(&Bs[s][swizzled(row, ch)], [&](int j) {
                    return k + j < k_end ? wgrad_b<Cfg>(x, blockIdx.z, n, k + j) : 0.f;
                });
            } else if constexpr (DGRAD) {
                // The group's filters across output channels: row n is input channel n.
                const float* wg = reinterpret_cast<const float*>(b);
                stage_chunk<KIND>(&Bs[s][swizzled(row, ch)], [&](int j) { return dgrad_b<Cfg>(wg, n, k + j); });
            } else if constexpr (!B_ROWS_ALIGNED || FROM_F32) {
                // f32 weights: a tf32 convolution's whose filters are not whole 16-byte
                // rows, or bf16r's (rounded as they are staged).
                const bool ok = n < N && k < K;
                float v[CPE];
                read_row(reinterpret_cast<const float*>(b) + (size_t)(ok ? n : 0) * K, ok, k, v);
                stage_chunk<KIND>(&Bs[s][swizzled(row, ch)], [&](int j) { return v[j]; });
            } else {
                const bool ok = n < N && k < K;
                cp_async_16(&Bs[s][swizzled(row, ch)], ok ? b + ((size_t)n * K + k) * E : b, ok);
            }
        }
    };

    // The pipeline: STAGES - 1 K steps in flight before the first product; each iteration
    // waits for its own step, then issues the one STAGES - 1 ahead into the stage every
    // warp finished reading (the barrier) and computes. Every iteration commits a group,
    // empty or not, so that wait<STAGES - 2> always means "step kt has landed".
    // FROM_F32 and every convolution (whose threads gather a tile): the threads' own loads
    // wait for their data before storing it, so they are issued after this step's mma
    // instructions (which the tensor cores then run while the loads are in flight); the
    // stage they fill is the same one, still unread until a later barrier.
    constexpr bool LATE = FROM_F32 || CONV;
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < NT) load(s, kt0 + s);
        cp_async_commit();
    }
    float acc[MI][NI][4] = {};
    const int mat = lane / 8, r8 = lane % 8;  // ldmatrix: this lane's matrix and row
    for (int kt = 0; kt < NT; ++kt) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        auto ahead = [&] {
            if (kt + STAGES - 1 < NT) load((kt + STAGES - 1) % STAGES, kt0 + kt + STAGES - 1);
            cp_async_commit();
        };
        if constexpr (!LATE) ahead();
        const uint4* as = As[kt % STAGES];
        const uint4* bs = Bs[kt % STAGES];
#pragma unroll
        for (int ks = 0; ks < BK / KSTEP; ++ks) {
            // A: matrices 0..3 = (rows 0-7, chunk 0), (rows 8-15, chunk 0), (rows 0-7,
            // chunk 1), (rows 8-15, chunk 1) of the 16-row tile: a[0..3] of the layout.
            unsigned af[MI][4];
#pragma unroll
            for (int mi = 0; mi < MI; ++mi) {
                ldmatrix_x4(af[mi], &as[swizzled(wm0 + mi * 16 + (mat % 2) * 8 + r8, 2 * ks + mat / 2)]);
                Op::prepare(af[mi]);
            }
            // B: matrices 0..3 = (n 0-7, chunk 0), (n 0-7, chunk 1), (n 8-15, chunk 0),
            // (n 8-15, chunk 1): b[0..1] of two 8-column tiles.
            unsigned bf[NI][2];
#pragma unroll
            for (int nj = 0; nj < NI / 2; ++nj) {
                unsigned t[4];
                ldmatrix_x4(t, &bs[swizzled(wn0 + nj * 16 + (mat / 2) * 8 + r8, 2 * ks + mat % 2)]);
                Op::prepare(t);
                bf[2 * nj][0] = t[0];
                bf[2 * nj][1] = t[1];
                bf[2 * nj + 1][0] = t[2];
                bf[2 * nj + 1][1] = t[3];
            }
#pragma unroll
            for (int mi = 0; mi < MI; ++mi)
#pragma unroll
                for (int ni = 0; ni < NI; ++ni) Op::run(acc[mi][ni], af[mi], bf[ni]);
        }
        if constexpr (LATE) ahead();
    }
    cp_async_wait<0>();

    // Epilogue: d[2h + j] is (row g + 8h, column 2t + j) of each 16 x 8 tile.
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int m = m0 + wm0 + mi * 16 + g + 8 * h;
            if (m >= M) continue;
#pragma unroll
            for (int ni = 0; ni < NI; ++ni)
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    const int n = n0 + wn0 + ni * 8 + 2 * t + j;
                    if (n >= N) continue;
                    float v = acc[mi][ni][2 * h + j];
                    if constexpr (WGRAD) {
                        store(m, n, v);
                    } else if constexpr (CONV) {
                        // NCHW: channel g * N + n of image m / ROWS, pixel m % ROWS, of the
                        // output (O channels) or of the input gradient (C channels).
                        constexpr int CHANNELS = DGRAD ? Cfg::C : Cfg::O;
                        const int oc = blockIdx.z * N + n;
                        if (BIAS) v += bias[oc];
                        if (RELU) v = fmaxf(v, 0.f);
                        c[((size_t)(m / ROWS) * CHANNELS + oc) * ROWS + m % ROWS] = v;
                    } else {
                        if (BIAS) v += bias[n];
                        if (RELU) v = fmaxf(v, 0.f);
                        c[(size_t)m * N + n] = v;
                    }
                }
        }
}

template <class Cfg>
__device__ __forceinline__ void gemm_mma_bf16(const __nv_bfloat16* __restrict__ x,
                                              const __nv_bfloat16* __restrict__ w,
                                              const float* __restrict__ bias,
                                              float* __restrict__ y, int batch) {
    gemm_mma_core<Cfg, MMA_BF16>(x, w, bias, y, batch);
}

template <class Cfg>
__device__ __forceinline__ void gemm_mma_f16(const __half* __restrict__ x,
                                             const __half* __restrict__ w,
                                             const float* __restrict__ bias,
                                             float* __restrict__ y, int batch) {
    gemm_mma_core<Cfg, MMA_F16>(x, w, bias, y, batch);
}

// A convolution's forward pass on tensor cores (tf32 products, f32 sums), the implicit GEMM
// of gemm_fwd.cuh: rows are the batch's output pixels (ROWS = P * Q per image), columns a
// group's output channels (N = O / GROUPS), K = C / GROUPS * R * R; the im2col tile is
// gathered by the threads (st_shared_16), the weights' by cp.async (or gathered too where
// K * 4 is not a multiple of 16 bytes); bias, ReLU and an NCHW store in the epilogue. Cfg adds the convolution's C, H,
// W, O, Q, R, STRIDE, PAD, GROUPS. Grid: z = GROUPS.
template <class Cfg>
__device__ __forceinline__ void conv_mma_tf32(const float* __restrict__ x,
                                              const float* __restrict__ w,
                                              const float* __restrict__ bias,
                                              float* __restrict__ y, int batch) {
    gemm_mma_core<Cfg, MMA_TF32, MMA_CONV>(x, w, bias, y, batch);
}

// Split-K partial sums of f32 operands rounded to tf32: slice blockIdx.z of ws.
template <class Cfg>
__device__ __forceinline__ void gemm_mma_split_tf32(const float* __restrict__ x,
                                                    const float* __restrict__ w,
                                                    float* __restrict__ ws, int batch) {
    gemm_mma_core<Cfg, MMA_TF32>(x, w, nullptr, ws, batch);
}

// y[m, n] = relu?((ws[0, m, n] + ws[1, m, n] + ... + ws[SPLIT - 1, m, n]) + bias?[n]),
// the parts added in that order; one thread an output, M = batch * ROWS.
template <class Cfg>
__device__ __forceinline__ void gemm_mma_reduce(const float* __restrict__ ws,
                                                const float* __restrict__ bias,
                                                float* __restrict__ y, int batch) {
    constexpr int N = Cfg::N, SPLIT = Cfg::SPLIT;
    const size_t mn = (size_t)batch * Cfg::ROWS * N;
    const size_t i = (size_t)blockIdx.x * Cfg::THREADS + threadIdx.x;
    if (i >= mn) return;
    float v = 0.f;
#pragma unroll
    for (int z = 0; z < SPLIT; ++z) v += ws[z * mn + i];
    if (Cfg::BIAS) v += bias[i % N];
    if (Cfg::RELU) v = fmaxf(v, 0.f);
    y[i] = v;
}

// A convolution's forward pass with bf16 products on f32 storage: conv_mma_tf32 with
// every operand rounded to bf16 (bf16_pair) as the threads stage it.
template <class Cfg>
__device__ __forceinline__ void conv_mma_bf16r(const float* __restrict__ x,
                                               const float* __restrict__ w,
                                               const float* __restrict__ bias,
                                               float* __restrict__ y, int batch) {
    gemm_mma_core<Cfg, MMA_BF16, MMA_CONV, true>(x, w, bias, y, batch);
}

// gemm_mma_bf16 on f32 operands, each rounded to bf16 as it is staged.
template <class Cfg>
__device__ __forceinline__ void gemm_mma_bf16r(const float* __restrict__ x,
                                               const float* __restrict__ w,
                                               const float* __restrict__ bias,
                                               float* __restrict__ y, int batch) {
    gemm_mma_core<Cfg, MMA_BF16, MMA_MATRIX, true>(x, w, bias, y, batch);
}

// Split-K partial sums of gemm_mma_bf16r: slice blockIdx.z of ws.
template <class Cfg>
__device__ __forceinline__ void gemm_mma_split_bf16r(const float* __restrict__ x,
                                                     const float* __restrict__ w,
                                                     float* __restrict__ ws, int batch) {
    gemm_mma_core<Cfg, MMA_BF16, MMA_MATRIX, true>(x, w, nullptr, ws, batch);
}

template <class Cfg>
__device__ __forceinline__ void gemm_mma_tf32(const float* __restrict__ x,
                                              const float* __restrict__ w,
                                              const float* __restrict__ bias,
                                              float* __restrict__ y, int batch) {
    gemm_mma_core<Cfg, MMA_TF32>(x, w, bias, y, batch);
}
// A convolution's input gradient on tensor cores (MMA_DGRAD above): tf32 products of dy
// and the filters, f32 sums, dx overwritten. Cfg: ROWS = H * W (input pixels an image),
// N = C / GROUPS, K = O / GROUPS * R * R, and the convolution's C, H, W, O, P, Q, R,
// STRIDE, PAD, GROUPS. Grid: x = ceil(batch * H * W / BM), y = ceil(N / BN), z = GROUPS.
template <class Cfg>
__device__ __forceinline__ void conv_mma_dgrad_tf32(const float* __restrict__ dy,
                                                    const float* __restrict__ w,
                                                    float* __restrict__ dx, int batch) {
    gemm_mma_core<Cfg, MMA_TF32, MMA_DGRAD>(dy, w, nullptr, dx, batch);
}

// conv_mma_dgrad_tf32 with dy and the filters rounded to bf16 as the threads stage them.
template <class Cfg>
__device__ __forceinline__ void conv_mma_dgrad_bf16r(const float* __restrict__ dy,
                                                     const float* __restrict__ w,
                                                     float* __restrict__ dx, int batch) {
    gemm_mma_core<Cfg, MMA_BF16, MMA_DGRAD, true>(dy, w, nullptr, dx, batch);
}
// A convolution's weight and bias gradients on tensor cores (MMA_WGRAD above): tf32 (or,
// with FROM_F32, bf16) products of dy and the im2col of x, f32 sums. One chunk (grid x =
// 1): dw and db written; several: each chunk's partial sums to ws[chunk][g][o][j], which
// gemm_bwd_weight_reduce (gemm_bwd_weight.cuh) adds in chunk order. Cfg: ROWS = O /
// GROUPS, N = KCOL + 1, K = CHUNK, and the convolution's sizes. Grid: x = ceil(batch * P
// * Q / CHUNK), y = ceil(ROWS / BM) * ceil(N / BN), z = GROUPS.
template <class Cfg, int KIND, bool FROM_F32>
__device__ __forceinline__ void conv_mma_wgrad(const float* __restrict__ x,
                                               const float* __restrict__ dy,
                                               float* __restrict__ dw, float* __restrict__ db,
                                               float* __restrict__ ws, int batch) {
    constexpr int G = Cfg::GROUPS, OG = Cfg::O / G;
    constexpr int KCOL = Cfg::C / G * Cfg::R * Cfg::R;
    static_assert(Cfg::ROWS == OG && Cfg::N == KCOL + 1 && Cfg::K == Cfg::CHUNK,
                  "a weight gradient's GEMM is OG x (KCOL + 1), K in chunks");
    const int g = blockIdx.z;
    const bool chunks = gridDim.x > 1;
    auto store = [=](int o, int j, float v) {
        if (chunks)
            ws[(((size_t)blockIdx.x * G + g) * OG + o) * (KCOL + 1) + j] = v;
        else if (j == KCOL)
            db[g * OG + o] = v;
        else
            dw[(size_t)(g * OG + o) * KCOL + j] = v;
    };
    gemm_mma_core<Cfg, KIND, MMA_WGRAD, FROM_F32>(dy, x, nullptr, nullptr, batch, store);
}

template <class Cfg>
__device__ __forceinline__ void conv_mma_wgrad_tf32(const float* __restrict__ x,
                                                    const float* __restrict__ dy,
                                                    float* __restrict__ dw,
                                                    float* __restrict__ db,
                                                    float* __restrict__ ws, int batch) {
    conv_mma_wgrad<Cfg, MMA_TF32, false>(x, dy, dw, db, ws, batch);
}

// conv_mma_wgrad_tf32 with dy and x rounded to bf16 as the threads stage them.
template <class Cfg>
__device__ __forceinline__ void conv_mma_wgrad_bf16r(const float* __restrict__ x,
                                                     const float* __restrict__ dy,
                                                     float* __restrict__ dw,
                                                     float* __restrict__ db,
                                                     float* __restrict__ ws, int batch) {
    conv_mma_wgrad<Cfg, MMA_BF16, true>(x, dy, dw, db, ws, batch);
}
// --precision f16: the bf16r kernels with every f32 operand rounded to f16 (f16_pair) as
// the threads stage it, for mma.m16n8k16's f16 form.
template <class Cfg>
__device__ __forceinline__ void conv_mma_f16r(const float* __restrict__ x,
                                              const float* __restrict__ w,
                                              const float* __restrict__ bias,
                                              float* __restrict__ y, int batch) {
    gemm_mma_core<Cfg, MMA_F16, MMA_CONV, true>(x, w, bias, y, batch);
}

template <class Cfg>
__device__ __forceinline__ void gemm_mma_f16r(const float* __restrict__ x,
                                              const float* __restrict__ w,
                                              const float* __restrict__ bias,
                                              float* __restrict__ y, int batch) {
    gemm_mma_core<Cfg, MMA_F16, MMA_MATRIX, true>(x, w, bias, y, batch);
}

template <class Cfg>
__device__ __forceinline__ void gemm_mma_split_f16r(const float* __restrict__ x,
                                                    const float* __restrict__ w,
                                                    float* __restrict__ ws, int batch) {
    gemm_mma_core<Cfg, MMA_F16, MMA_MATRIX, true>(x, w, nullptr, ws, batch);
}

template <class Cfg>
__device__ __forceinline__ void conv_mma_dgrad_f16r(const float* __restrict__ dy,
                                                    const float* __restrict__ w,
                                                    float* __restrict__ dx, int batch) {
    gemm_mma_core<Cfg, MMA_F16, MMA_DGRAD, true>(dy, w, nullptr, dx, batch);
}

template <class Cfg>
__device__ __forceinline__ void conv_mma_wgrad_f16r(const float* __restrict__ x,
                                                    const float* __restrict__ dy,
                                                    float* __restrict__ dw,
                                                    float* __restrict__ db,
                                                    float* __restrict__ ws, int batch) {
    conv_mma_wgrad<Cfg, MMA_F16, true>(x, dy, dw, db, ws, batch);
}
#endif  // ALEXNET_GEMM_MMA_CUH
