// {{NAME}}: gradient of `{{LAYER}}` ({{DESC}}). With s_i = KB + ALPHA/SIZE * sum_{j in N(i)} x_j^2
// and y_i = x_i s_i^-BETA (windows clipped to the channel's group of CG channels):
//   dx_c = dy_c s_c^-BETA - 2 ALPHA/SIZE BETA x_c sum_{i in N(c)} dy_i x_i s_i^(-BETA-1)
// One thread per element: it loads the 2 SIZE - 1 channels around its own once and
// recomputes the SIZE window sums it needs from them.
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
    // Channels c - 2 HALF .. c + 2 HALF (every x a window sum below needs), zero outside
    // the channel's group: a window clipped to the group sums the same.
    float xs[4 * HALF + 1];
#pragma unroll
    for (int d = 0; d <= 4 * HALF; ++d) {
        const int j = c - 2 * HALF + d;
        xs[d] = (j >= lo && j <= hi) ? xc[(size_t)j * HW] : 0.f;
    }
    float cross = 0.f, sc = 1.f;
#pragma unroll
    for (int e = 0; e <= 2 * HALF; ++e) {
        // j = c - HALF + e, whose window is xs[e .. e + 2 HALF].
        const int j = c - HALF + e;
        float s = 0.f;
#pragma unroll
        for (int d = e; d <= e + 2 * HALF; ++d) s = fmaf(xs[d], xs[d], s);
        s = KB + A * s;
        if (e == HALF) sc = s;
        if (j >= lo && j <= hi)
            cross += gc[(size_t)j * HW] * xs[e + HALF] * powf(s, -BETA - 1.f);
    }
    dx[i] = gc[(size_t)c * HW] * powf(sc, -BETA) - 2.f * A * BETA * xs[2 * HALF] * cross;
}
