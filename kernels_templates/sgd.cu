// {{NAME}}: one SGD step of every parameter of `{{NETWORK}}` in a single launch (the
// paper's update, section 5):
//   v <- MOMENTUM v - DECAY lr m w - lr m g;   w <- w + v
// with m the tensor's learning-rate multiplier. The tensors stay separate allocations:
// their pointers come as one array per role, their lengths are constants, and a grid-stride
// loop walks each tensor in turn; lr[k] is the learning rate times
// the tensor's multiplier. Grid x = {{BLOCKS}} blocks of {{THREADS}} threads.
// Slots for up to {{SLOTS}} tensors (the runtime fills the first TENSORS), so the struct's
// layout is the same for every network: 3 x {{SLOTS}} pointers, then {{SLOTS}} floats.
struct SgdTensors {
    float* w[{{SLOTS}}];
    float* v[{{SLOTS}}];
    const float* g[{{SLOTS}}];
    float lr[{{SLOTS}}];
};

extern "C" __global__ void __launch_bounds__({{THREADS}})
{{NAME}}(SgdTensors t, float momentum, float decay) {
    constexpr int TENSORS = {{TENSORS}};
    constexpr unsigned LEN[TENSORS] = { {{LENS}} };
    const unsigned stride = gridDim.x * blockDim.x;
    for (int k = 0; k < TENSORS; ++k) {
        float* __restrict__ w = t.w[k];
        float* __restrict__ v = t.v[k];
        const float* __restrict__ g = t.g[k];
        const float lr = t.lr[k];
        for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < LEN[k]; i += stride) {
            const float vi = momentum * v[i] - decay * lr * w[i] - lr * g[i];
            v[i] = vi;
            w[i] += vi;
        }
    }
}
