// {{NAME}}: gradient of `{{LAYER}}` ({{DESC}}), no padding, floor rounding.
// Gathered, not scattered: one thread per input element adds the gradients of the windows
// that contain it, in window order (the CPU backend's order, so sums agree), no atomics.
// Max pooling routes a window's gradient to its first largest element in row-major order.
// Grid x = ceil(batch * C * H * W / {{THREADS}}). dx is overwritten.
extern "C" __global__ void __launch_bounds__({{THREADS}})
{{NAME}}(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ dx,
         int batch) {
    constexpr int C = {{C}}, H = {{H}}, W = {{W}}, P = {{P}}, Q = {{Q}};
    constexpr int K = {{K}}, S = {{STRIDE}};
    constexpr bool MAX = {{MAX}};
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= batch * C * H * W) return;
    const int w = i % W, h = (i / W) % H, nc = i / (H * W);
    const float* plane = x + (size_t)nc * H * W;
    const float* g = dy + (size_t)nc * P * Q;
    // Windows p with p*S <= h < p*S + K.
    const int p_lo = h >= K ? (h - K) / S + 1 : 0, p_hi = h / S < P - 1 ? h / S : P - 1;
    const int q_lo = w >= K ? (w - K) / S + 1 : 0, q_hi = w / S < Q - 1 ? w / S : Q - 1;
    float acc = 0.f;
    for (int p = p_lo; p <= p_hi; ++p)
        for (int q = q_lo; q <= q_hi; ++q) {
            if (MAX) {
                int best = (p * S) * W + q * S;
                float bv = __int_as_float(0xff800000);  // -inf
#pragma unroll
                for (int ky = 0; ky < K; ++ky)
#pragma unroll
                    for (int kx = 0; kx < K; ++kx) {
                        const int j = (p * S + ky) * W + q * S + kx;
                        if (plane[j] > bv) {
                            bv = plane[j];
                            best = j;
                        }
                    }
                if (best == h * W + w) acc += g[p * Q + q];
            } else {
                acc += g[p * Q + q] * (1.f / (K * K));
            }
        }
    dx[i] = acc;
}
