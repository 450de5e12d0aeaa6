// finite<Cfg>: which of a network's gradients hold a value that is not finite (NaN or
// +-inf). The runtime launches it after the backward pass and before the SGD step, so a
// bad step can stop the run or be skipped with the weights and momentum untouched (issue
// 14's guard); only Cfg::TENSORS floats come back to the host.
// t is sgd.cuh's SgdTensors (only t.g is read); flags[k] is set to 1 when tensor k has a
// value that is not finite, and left as it was otherwise (the runtime zeroes the flags
// first). A grid-stride loop over each tensor in turn, as sgd<Cfg>: grid x = Cfg::BLOCKS
// blocks of Cfg::THREADS threads. The test is on the bits (exponent all ones), so that
// fast-math flags cannot fold it away.
#ifndef ALEXNET_FINITE_CUH
#define ALEXNET_FINITE_CUH

#include "sgd.cuh"

template <class Cfg, unsigned... L>
__device__ __forceinline__ void finite_lists(UintList<L...>, SgdTensors t,
                                             float* __restrict__ flags) {
    constexpr int TENSORS = Cfg::TENSORS;
    static_assert(TENSORS <= ALEXNET_SGD_SLOTS, "more tensors than slots");
    static_assert(sizeof...(L) == TENSORS, "one length per tensor");
    constexpr unsigned LEN[TENSORS] = {L...};
    const unsigned stride = gridDim.x * blockDim.x;
    for (int k = 0; k < TENSORS; ++k) {
        const unsigned* __restrict__ g = reinterpret_cast<const unsigned*>(t.g[k]);
        bool bad = false;
        for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < LEN[k]; i += stride) {
            bad |= (g[i] & 0x7f800000u) == 0x7f800000u;
        }
        // Every writer writes the same value: no atomic needed.
        if (bad) flags[k] = 1.0f;
    }
}

template <class Cfg>
__device__ __forceinline__ void finite(SgdTensors t, float* __restrict__ flags) {
    finite_lists<Cfg>(typename Cfg::LEN{}, t, flags);
}
#endif  // ALEXNET_FINITE_CUH
