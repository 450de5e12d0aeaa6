// A batch of network inputs cut from prepared 8-bit images: the paper's training
// augmentation (random crop, mirror, colour shift) or the test crops, with the mean
// subtracted and the values scaled, in one pass; one thread per output value.
//
// images: `batch` images of Cfg::SIDE x Cfg::SIDE x 3 bytes (HWC, as a prepared set's
// shards hold them); draws: Cfg::PER_IMAGE draws per image, Cfg::DRAW floats each:
// the crop's top row and left column, 1 when mirrored, the shift added to each channel
// (the host draws them: alexnet-runtime's data::patch::Draw); mean: 3 x SIDE x SIDE (CHW);
// out: batch * PER_IMAGE patches of 3 x CROP_H x CROP_W (CHW). Every value is
//   ((pixel - mean) * units + shift[c]) * scale_c
// with one rounding per operation (the _rn intrinsics are never contracted into a
// fused multiply-add), as the CPU computes it, so both give the same bits.
#ifndef ALEXNET_AUGMENT_CUH
#define ALEXNET_AUGMENT_CUH

#ifdef ALEXNET_HOST_EMULATION
#define ALEXNET_FSUB(a, b) ((a) - (b))
#define ALEXNET_FADD(a, b) ((a) + (b))
#define ALEXNET_FMUL(a, b) ((a) * (b))
#else
#define ALEXNET_FSUB(a, b) __fsub_rn(a, b)
#define ALEXNET_FADD(a, b) __fadd_rn(a, b)
#define ALEXNET_FMUL(a, b) __fmul_rn(a, b)
#endif

template <class Cfg>
__device__ __forceinline__ void augment(const unsigned char* __restrict__ images,
                                        const float* __restrict__ draws,
                                        const float* __restrict__ mean,
                                        float* __restrict__ out, float units, float scale_r,
                                        float scale_g, float scale_b, int batch) {
    constexpr int SIDE = Cfg::SIDE, CH = Cfg::CROP_H, CW = Cfg::CROP_W;
    constexpr int PER_IMAGE = Cfg::PER_IMAGE, DRAW = Cfg::DRAW;
    constexpr int PATCH = 3 * CH * CW;
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)batch * PER_IMAGE * PATCH) return;
    const int x = (int)(i % CW);
    const int y = (int)(i / CW % CH);
    const int c = (int)(i / (CW * CH) % 3);
    const long long p = i / PATCH;  // the patch, numbered over the batch
    const float* d = draws + p * DRAW;
    const int sy = (int)d[0] + y;
    const int sx = (int)d[1] + (d[2] != 0.f ? CW - 1 - x : x);
    const long long image = p / PER_IMAGE;
    const float v = (float)images[((image * SIDE + sy) * SIDE + sx) * 3 + c];
    const float m = mean[(c * SIDE + sy) * SIDE + sx];
    const float scale = c == 0 ? scale_r : c == 1 ? scale_g : scale_b;
    out[i] = ALEXNET_FMUL(ALEXNET_FADD(ALEXNET_FMUL(ALEXNET_FSUB(v, m), units), d[3 + c]), scale);
}
#endif  // ALEXNET_AUGMENT_CUH
