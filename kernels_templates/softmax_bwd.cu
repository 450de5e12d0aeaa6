// {{NAME}}: gradient of `{{LAYER}}` ({{DESC}}) from its output: dx = y (dy - sum_c dy_c y_c),
// over C channels at each of the HW positions. One warp per (image, position).
// Grid x = ceil(batch * HW * 32 / {{THREADS}}). dx is overwritten.
extern "C" __global__ void __launch_bounds__({{THREADS}})
{{NAME}}(const float* __restrict__ y, const float* __restrict__ dy, float* __restrict__ dx,
         int batch) {
    constexpr int C = {{C}}, HW = {{HW}};
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (warp >= batch * HW) return;
    const int n = warp / HW, hw = warp % HW;
    const size_t base = (size_t)n * C * HW + hw;
    float dot = 0.f;
    for (int c = lane; c < C; c += 32) dot = fmaf(dy[base + (size_t)c * HW], y[base + (size_t)c * HW], dot);
#pragma unroll
    for (int d = 16; d > 0; d /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, d);
    for (int c = lane; c < C; c += 32) {
        const size_t i = base + (size_t)c * HW;
        dx[i] = y[i] * (dy[i] - dot);
    }
}
