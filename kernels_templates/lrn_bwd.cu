// {{NAME}}: gradient of `{{LAYER}}` ({{DESC}}). With s_i = KB + ALPHA/SIZE * sum_{j in N(i)} x_j^2
// and y_i = x_i s_i^-BETA (windows clipped to the channel's group of CG channels):
//   dx_c = dy_c s_c^-BETA - 2 ALPHA/SIZE BETA x_c sum_{i in N(c)} dy_i x_i s_i^(-BETA-1)
// One thread per element, recomputing the window sums it needs (SIZE^2 loads, cached).
// Grid x = ceil(batch * C * HW / {{THREADS}}). dx is overwritten.
extern "C" __global__ void __launch_bounds__({{THREADS}})
{{NAME}}(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ dx,
         int batch) {
    constexpr int C = {{C}}, HW = {{HW}}, SIZE = {{SIZE}}, HALF = SIZE / 2, GROUPS = {{GROUPS}};
    constexpr int CG = C / GROUPS;
    constexpr float ALPHA = {{ALPHA}}, BETA = {{BETA}}, KB = {{KB}}, A = ALPHA / SIZE;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= batch * C * HW) return;
    const int hw = i % HW, c = (i / HW) % C, n = i / (C * HW);
    const int lo = (c / CG) * CG, hi = lo + CG - 1;
    const float* xc = x + (size_t)n * C * HW + hw;
    const float* gc = dy + (size_t)n * C * HW + hw;
    auto s_of = [&](int ch) -> float {
        const int f = ch - HALF > lo ? ch - HALF : lo, t = ch + HALF < hi ? ch + HALF : hi;
        float s = 0.f;
        for (int j = f; j <= t; ++j) {
            const float v = xc[(size_t)j * HW];
            s = fmaf(v, v, s);
        }
        return KB + A * s;
    };
    const int from = c - HALF > lo ? c - HALF : lo, to = c + HALF < hi ? c + HALF : hi;
    float cross = 0.f;
    for (int j = from; j <= to; ++j) {
        const float sj = s_of(j);
        cross += gc[(size_t)j * HW] * xc[(size_t)j * HW] * powf(sj, -BETA - 1.f);
    }
    const float sc = s_of(c);
    dx[i] = gc[(size_t)c * HW] * powf(sc, -BETA) - 2.f * A * BETA * xc[(size_t)c * HW] * cross;
}
