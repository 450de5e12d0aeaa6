// {{NAME}}: gradient through the ReLU of `{{LAYER}}` ({{DESC}}): dx = y > 0 ? dy : 0, from the ReLU's
// output y. May run in place (dx == dy), so no pointer is __restrict__.
// One thread per element; grid x = ceil(batch * LEN / {{THREADS}}).
extern "C" __global__ void __launch_bounds__({{THREADS}})
{{NAME}}(const float* y, const float* dy, float* dx, int batch) {
    constexpr int LEN = {{LEN}};
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= batch * LEN) return;
    dx[i] = y[i] > 0.f ? dy[i] : 0.f;
}
