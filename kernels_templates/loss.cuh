// softmax_xent<Cfg>: softmax cross-entropy of Cfg::CLASSES logits per image, fused and
// numerically stable (max subtracted, log-sum-exp). Writes
//   dlogits = (softmax - onehot(label)) / batch
//   stats   = [sum of -log softmax[label], top-1 correct, top-5 correct]
// One block of THREADS threads: each warp takes images warp, warp + WARPS, ...; the
// per-image results are reduced in a fixed order (deterministic). Labels are class indices
// stored as floats (checked by the caller). A label's rank counts the logits above it and
// equal logits with a smaller index, as on the CPU.
#ifndef ALEXNET_LOSS_CUH
#define ALEXNET_LOSS_CUH

template <class Cfg>
__device__ __forceinline__ void softmax_xent(const float* __restrict__ logits,
                                             const float* __restrict__ labels,
                                             float* __restrict__ dlogits,
                                             float* __restrict__ stats, int batch) {
    constexpr int C = Cfg::CLASSES, WARPS = Cfg::THREADS / 32;
    __shared__ float part[3][WARPS];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float loss = 0.f, top1 = 0.f, top5 = 0.f;
    for (int n = warp; n < batch; n += WARPS) {
        const float* z = logits + (size_t)n * C;
        float* d = dlogits + (size_t)n * C;
        const float lf = labels[n];
        const int label = lf >= 0.f && lf < (float)C ? (int)lf : -1;
        // A label that is not a class index (the caller validates them) gives a NaN loss.
        const float zl = label >= 0 ? z[label] : __int_as_float(0x7fc00000);
        float m = __int_as_float(0xff800000);  // -inf
        int beaten = 0;
        for (int c = lane; c < C; c += 32) {
            m = fmaxf(m, z[c]);
            beaten += (z[c] > zl || (z[c] == zl && c < label)) ? 1 : 0;
        }
#pragma unroll
        for (int o = 16; o > 0; o /= 2) {
            m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
            beaten += __shfl_xor_sync(0xffffffffu, beaten, o);
        }
        float s = 0.f;
        for (int c = lane; c < C; c += 32) s += expf(z[c] - m);
#pragma unroll
        for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
        const float log_z = logf(s) + m;
        const float inv = 1.f / batch;
        for (int c = lane; c < C; c += 32)
            d[c] = (expf(z[c] - log_z) - (c == label ? 1.f : 0.f)) * inv;
        loss += log_z - zl;
        top1 += beaten == 0 ? 1.f : 0.f;
        top5 += beaten < 5 ? 1.f : 0.f;
    }
    if (lane == 0) {
        part[0][warp] = loss;
        part[1][warp] = top1;
        part[2][warp] = top5;
    }
    __syncthreads();
    if (threadIdx.x < 3) {
        float t = 0.f;
        for (int w = 0; w < WARPS; ++w) t += part[threadIdx.x][w];
        stats[threadIdx.x] = t;
    }
}
#endif  // ALEXNET_LOSS_CUH
