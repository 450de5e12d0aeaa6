// {{NAME}}: forward of `{{LAYER}}` ({{DESC}}): local response normalisation across
// channels, y = x / (k + alpha / size * sum x^2)^beta, the window clipped to the channel's
// group of CG = C / GROUPS channels (the towers of a split network).
// One thread per element; grid x = ceil(batch * C * H * W / {{THREADS}}).
extern "C" __global__ void __launch_bounds__({{THREADS}})
{{NAME}}(const float* __restrict__ x, float* __restrict__ y, int batch) {
    constexpr int C = {{C}}, HW = {{HW}}, SIZE = {{SIZE}}, HALF = SIZE / 2, GROUPS = {{GROUPS}};
    constexpr int CG = C / GROUPS;
    constexpr float ALPHA = {{ALPHA}}, BETA = {{BETA}}, KB = {{KB}};
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= batch * C * HW) return;
    const int hw = i % HW, c = (i / HW) % C, n = i / (C * HW);
    const int lo = (c / CG) * CG, hi = lo + CG - 1;
    const int from = c - HALF > lo ? c - HALF : lo, to = c + HALF < hi ? c + HALF : hi;
    const float* col = x + (size_t)n * C * HW + hw;
    float s = 0.f;
    for (int j = from; j <= to; ++j) {
        const float v = col[(size_t)j * HW];
        s = fmaf(v, v, s);
    }
    const float t = KB + (ALPHA / SIZE) * s;
    // t^-0.75 as two square roots when beta is 0.75 (the paper's value); powf otherwise.
    const float scale = BETA == 0.75f ? 1.f / (sqrtf(t) * sqrtf(sqrtf(t))) : powf(t, -BETA);
    y[i] = x[i] * scale;
}
