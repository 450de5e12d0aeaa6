// {{NAME}}: forward of `{{LAYER}}` ({{DESC}}).
// ReLU: one thread per element; grid x = ceil(batch * LEN / {{THREADS}}).
extern "C" __global__ void __launch_bounds__({{THREADS}})
{{NAME}}(const float* __restrict__ x, float* __restrict__ y, int batch) {
    constexpr int LEN = {{LEN}};
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < batch * LEN) y[i] = fmaxf(x[i], 0.f);
}
