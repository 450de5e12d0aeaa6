// sgd<Cfg>: one SGD step of every parameter of a network in a single launch (the paper's
// update, section 5):
//   v <- momentum v - decay lr m w - lr m g;   w <- w + v
// with m the tensor's learning-rate multiplier. The tensors stay separate allocations:
// their pointers come as one array per role, their lengths are constants (Cfg::LEN), and a
// grid-stride loop walks each tensor in turn; lr[k] is the learning rate times the
// tensor's multiplier. Grid x = Cfg::BLOCKS blocks of Cfg::THREADS threads.
// Slots for up to ALEXNET_SGD_SLOTS tensors (the runtime fills the first Cfg::TENSORS), so
// the struct's layout is the same for every network: 3 x 64 pointers, then 64 floats (the
// runtime's `SgdTensors` mirrors it).
#ifndef ALEXNET_SGD_CUH
#define ALEXNET_SGD_CUH

#define ALEXNET_SGD_SLOTS 64
struct SgdTensors {
    float* w[ALEXNET_SGD_SLOTS];
    float* v[ALEXNET_SGD_SLOTS];
    const float* g[ALEXNET_SGD_SLOTS];
    float lr[ALEXNET_SGD_SLOTS];
};

// The tensors' lengths, as a type (Cfg::LEN), unpacked into a local array below.
template <unsigned... V>
struct UintList {};

template <class Cfg, unsigned... L>
__device__ __forceinline__ void sgd_lists(UintList<L...>, SgdTensors t, float momentum,
                                          float decay) {
    constexpr int TENSORS = Cfg::TENSORS;
    static_assert(TENSORS <= ALEXNET_SGD_SLOTS, "more tensors than slots");
    static_assert(sizeof...(L) == TENSORS, "one length per tensor");
    constexpr unsigned LEN[TENSORS] = {L...};
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

template <class Cfg>
__device__ __forceinline__ void sgd(SgdTensors t, float momentum, float decay) {
    sgd_lists<Cfg>(typename Cfg::LEN{}, t, momentum, decay);
}
#endif  // ALEXNET_SGD_CUH
