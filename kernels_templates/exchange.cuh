// The exchanges of tower Cfg::TOWER (of 2) around a layer that reads both towers. Each
// tower holds PART values per image of the layer's input; the whole input is 2 * PART
// values per image, tower 0's part first. The other tower's buffer (`other`, `received`)
// is read in place when both towers share a GPU's context, or is first peer-copied into
// this tower's memory (two GPUs); either way after an event of the stream that wrote it.
// One thread per element of a part; grid x = ceil(batch * PART / THREADS).
#ifndef ALEXNET_EXCHANGE_CUH
#define ALEXNET_EXCHANGE_CUH

// exchange_gather<Cfg> (forward): the whole input from this tower's part and the other
// tower's.
template <class Cfg>
__device__ __forceinline__ void exchange_gather(const float* __restrict__ own,
                                                const float* __restrict__ other,
                                                float* __restrict__ whole, int batch) {
    constexpr int PART = Cfg::PART, TOWER = Cfg::TOWER;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= batch * PART) return;
    float* w = whole + (i / PART) * (2 * PART) + i % PART;
    w[TOWER * PART] = own[i];
    w[(1 - TOWER) * PART] = other[i];
}

// exchange_pack<Cfg> (backward, sending): the other tower's part of this tower's input
// gradient dx, made contiguous for the peer copy.
template <class Cfg>
__device__ __forceinline__ void exchange_pack(const float* __restrict__ dx,
                                              float* __restrict__ packed, int batch) {
    constexpr int PART = Cfg::PART, TOWER = Cfg::TOWER;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= batch * PART) return;
    packed[i] = dx[(i / PART) * (2 * PART) + (1 - TOWER) * PART + i % PART];
}

// exchange_reduce<Cfg> (backward, receiving): this tower's output gradient, its part of
// its own dx plus the part the other tower packed. (Two terms: the order of the sum does
// not matter.)
template <class Cfg>
__device__ __forceinline__ void exchange_reduce(const float* __restrict__ dx,
                                                const float* __restrict__ received,
                                                float* __restrict__ dy, int batch) {
    constexpr int PART = Cfg::PART, TOWER = Cfg::TOWER;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= batch * PART) return;
    dy[i] = dx[(i / PART) * (2 * PART) + TOWER * PART + i % PART] + received[i];
}
#endif  // ALEXNET_EXCHANGE_CUH
