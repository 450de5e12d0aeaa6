// {{NAME}}: forward of `{{LAYER}}` ({{DESC}}), no padding, floor rounding.
// One thread per output element; grid x = ceil(batch * C * P * Q / {{THREADS}}).
extern "C" __global__ void __launch_bounds__({{THREADS}})
{{NAME}}(const float* __restrict__ x, float* __restrict__ y, int batch) {
    constexpr int C = {{C}}, H = {{H}}, W = {{W}}, P = {{P}}, Q = {{Q}};
    constexpr int K = {{K}}, S = {{STRIDE}};
    constexpr bool MAX = {{MAX}};
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= batch * C * P * Q) return;
    const int q = i % Q, p = (i / Q) % P, nc = i / (P * Q);
    const float* plane = x + (size_t)nc * H * W + (p * S) * W + q * S;
    float acc = MAX ? __int_as_float(0xff800000) : 0.f;  // -inf
#pragma unroll
    for (int ky = 0; ky < K; ++ky)
#pragma unroll
        for (int kx = 0; kx < K; ++kx) {
            const float v = plane[ky * W + kx];
            acc = MAX ? fmaxf(acc, v) : acc + v;
        }
    y[i] = MAX ? acc : acc * (1.f / (K * K));
}
