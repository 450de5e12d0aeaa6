// The tensor-core primitives of the generated GEMMs, each a small device function around
// one PTX instruction (sm_80 and later):
//   mma_m16n8k16_bf16 / mma_m16n8k16_f16  d += a * b, a 16x16 bf16/f16 tile of A (row) by a
//                                        16x8 tile of B (col), f32 accumulators
//   mma_m16n8k8_tf32                     the same for a 16x8 tile of A by 8x8 of B, tf32
//   to_tf32                              cvt.rna.tf32.f32: f32 bits rounded to 10 mantissa
//                                        bits, to nearest, ties away from zero
//   ldmatrix_x4                          four 8x8 matrices of 16-bit values from shared memory
//   cp_async_16, cp_async_commit,        a 16-byte global -> shared copy that does not block
//   cp_async_wait<N>                     (zero-filled when its predicate is false), closing
//                                        a group of them, waiting until N groups are in flight
//   st_shared_16                         a 16-byte store of registers to shared memory
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16 / m16n8k8"; lane l of the
// warp, g = l / 4, t = l % 4; A is M x K, B is K x N, C/D M x N):
//   m16n8k16: a[0] = A(g, 2t..2t+1), a[1] = A(g+8, 2t..2t+1), a[2] = A(g, 2t+8..2t+9),
//             a[3] = A(g+8, 2t+8..2t+9) (two 16-bit values a register, the lower k in the
//             low half); b[0] = B(2t..2t+1, g), b[1] = B(2t+8..2t+9, g)
//   m16n8k8:  a[0] = A(g, t), a[1] = A(g+8, t), a[2] = A(g, t+4), a[3] = A(g+8, t+4);
//             b[0] = B(t, g), b[1] = B(t+4, g)
//   C/D:      d[0] = (g, 2t), d[1] = (g, 2t+1), d[2] = (g+8, 2t), d[3] = (g+8, 2t+1)
//   ldmatrix.x4: lane 8i + r gives the address of row r (16 bytes) of matrix i; 32-bit word
//             w of that row lands in register i of lane 4r + w.
//
// The host emulation of the tests (tests/emulation/mma.hpp) defines ALEXNET_HOST_EMULATION
// and supplies these functions with the same names and meaning, implemented as the index
// arithmetic above (a warp's lanes exchange their fragments through a buffer), so every
// kernel built on them is checked against the CPU backend without a GPU.
#ifndef ALEXNET_MMA_CUH
#define ALEXNET_MMA_CUH
#ifndef ALEXNET_HOST_EMULATION

// The shared-state-space address of a generic pointer to shared memory.
__device__ __forceinline__ unsigned smem_address(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void mma_m16n8k16_bf16(float (&d)[4], const unsigned (&a)[4],
                                                  const unsigned (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ void mma_m16n8k16_f16(float (&d)[4], const unsigned (&a)[4],
                                                 const unsigned (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// a and b hold tf32 values (f32 bits whose 13 low mantissa bits are zero: see to_tf32).
__device__ __forceinline__ void mma_m16n8k8_tf32(float (&d)[4], const unsigned (&a)[4],
                                                 const unsigned (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// The f32 whose bits are `bits`, rounded to tf32 (cvt.rna: to nearest, ties away from zero).
__device__ __forceinline__ unsigned to_tf32(unsigned bits) {
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(__uint_as_float(bits)));
    return r;
}

// row: this lane's row address (16-byte aligned, shared memory), as described above.
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_address(row))
                 : "memory");
}

// Copies 16 bytes from global `src` to shared `dst` (both 16-byte aligned), or writes 16
// zero bytes when `pred` is false (then nothing is read; `src` must still be a valid
// address). Complete only after the group is waited for.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool pred) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(dst)),
                 "l"(src), "r"(pred ? 16 : 0)
                 : "memory");
}

// Stores 16 bytes from registers to shared `dst` (16-byte aligned) at once: a stage
// filled by the threads themselves (values gathered from scattered addresses, as a
// convolution's im2col tile is) beside the stages cp.async fills.
__device__ __forceinline__ void st_shared_16(void* dst, uint4 v) {
    *static_cast<uint4*>(dst) = v;
}

__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

#endif  // ALEXNET_HOST_EMULATION
#endif  // ALEXNET_MMA_CUH
