// softmax_fwd<Cfg>: softmax over Cfg::C channels at each of the Cfg::HW positions, max
// subtracted. One warp per (image, position): lanes stride over channels and reduce with
// shuffles. Grid x = ceil(batch * HW * 32 / THREADS).
#ifndef ALEXNET_SOFTMAX_CUH
#define ALEXNET_SOFTMAX_CUH

template <class Cfg>
__device__ __forceinline__ void softmax_fwd(const float* __restrict__ x, float* __restrict__ y,
                                            int batch) {
    constexpr int C = Cfg::C, HW = Cfg::HW;
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (warp >= batch * HW) return;
    const int n = warp / HW, hw = warp % HW;
    const float* in = x + (size_t)n * C * HW + hw;
    float* out = y + (size_t)n * C * HW + hw;
    float m = __int_as_float(0xff800000);  // -inf
    for (int c = lane; c < C; c += 32) m = fmaxf(m, in[(size_t)c * HW]);
#pragma unroll
    for (int d = 16; d > 0; d /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, d));
    float s = 0.f;
    for (int c = lane; c < C; c += 32) s += expf(in[(size_t)c * HW] - m);
#pragma unroll
    for (int d = 16; d > 0; d /= 2) s += __shfl_xor_sync(0xffffffffu, s, d);
    const float inv = 1.f / s;
    for (int c = lane; c < C; c += 32) out[(size_t)c * HW] = expf(in[(size_t)c * HW] - m) * inv;
}
#endif  // ALEXNET_SOFTMAX_CUH
