// dropout<Cfg>: training-time dropout, inverted: y = keep ? x * SCALE : 0
// with SCALE = 1 / (1 - p). keep is decided by Philox4x32-10 (Salmon et al. 2011) on the
// counter (element, LAYER_ID, step) with the run's seed as key, exactly as the CPU backend
// (alexnet-runtime/src/philox.rs) does, so both drop the same units. The same kernel with
// the same (seed, step) is the backward pass (from dy to dx). In tower TOWER of TOWERS
// (a split network's tower plan) the counter is the element's index in the whole
// network, so the towers drop the units the unsplit network drops; TOWERS = 1 for a
// whole network, where it is the element's own index.
// One thread per element; grid x = ceil(batch * LEN / THREADS).
#ifndef ALEXNET_DROPOUT_CUH
#define ALEXNET_DROPOUT_CUH

template <class Cfg>
__device__ __forceinline__ void dropout(const float* __restrict__ x, float* __restrict__ y,
                                        unsigned seed_lo, unsigned seed_hi, unsigned step_lo,
                                        unsigned step_hi, int batch) {
    constexpr unsigned LEN = Cfg::LEN, TOWER = Cfg::TOWER, TOWERS = Cfg::TOWERS;
    constexpr unsigned LAYER_ID = Cfg::LAYER_ID, THRESHOLD = Cfg::THRESHOLD;
    constexpr float SCALE = Cfg::SCALE();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= batch * (int)LEN) return;
    const unsigned u = (unsigned)i;
    unsigned c0 = u / LEN * (LEN * TOWERS) + TOWER * LEN + u % LEN;
    unsigned c1 = LAYER_ID, c2 = step_lo, c3 = step_hi;
    unsigned k0 = seed_lo, k1 = seed_hi;
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        const unsigned long long p0 = (unsigned long long)0xD2511F53u * c0;
        const unsigned long long p1 = (unsigned long long)0xCD9E8D57u * c2;
        const unsigned hi0 = (unsigned)(p0 >> 32), lo0 = (unsigned)p0;
        const unsigned hi1 = (unsigned)(p1 >> 32), lo1 = (unsigned)p1;
        const unsigned n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
    }
    y[i] = c0 >= THRESHOLD ? x[i] * SCALE : 0.f;
}
#endif  // ALEXNET_DROPOUT_CUH
