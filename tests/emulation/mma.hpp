// Host emulation of kernels_templates/mma.cuh, included by tests/cuda_emulated.rs after
// its prelude (threadIdx, the per-warp barriers). Defining ALEXNET_HOST_EMULATION makes
// mma.cuh leave out its PTX; the functions below take its place with the same names and
// meaning, written as the PTX ISA's fragment layouts (see the table at the top of
// mma.cuh):
// - mma: the warp's 32 lanes publish their fragments, meet on the warp's barrier, and each
//   lane gathers the whole 16 x K tile of A and K x 8 tile of B to compute its own four
//   results. Products of bf16, f16 and tf32 values are exact in double; each lane sums
//   its K products and its accumulator in double and rounds once to f32. A tf32 operand
//   uses only its tf32 bits (the low 13 mantissa bits are dropped, as by the hardware,
//   which reads nothing else), so a kernel that forgets cvt.rna is caught.
// - ldmatrix.x4: the lanes publish their row addresses; lane 4r + w reads word w of row r
//   of matrix i into register i.
// - cp.async: each thread queues its copies and commits them in groups; a copy happens
//   only when a wait_group needs it to have landed (the latest the PTX allows), and the
//   destination holds NaN until then, so a kernel that reads a stage before waiting for
//   it reads garbage and fails.
// - Races, found whatever the threads' timing: every 16-byte chunk of shared memory that
//   cp.async writes or ldmatrix reads remembers the barrier interval (`sync_epoch`) and
//   the warps of its last reads and of its last refill, and whether its copy is still in
//   flight. A refill and a read by different warps in one interval, or a read of a copy
//   that has not landed, stop the kernel with "race: ..." on stderr.
#define ALEXNET_HOST_EMULATION
#include <cstdint>
#include <deque>
#include <mutex>
#include <unordered_map>

#define __align__(n) __attribute__((aligned(n)))
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct __half { unsigned short bits; };
struct __nv_bfloat16 { unsigned short bits; };

static inline float __uint_as_float(unsigned v) { float f; std::memcpy(&f, &v, 4); return f; }
static inline unsigned __float_as_uint(float f) { unsigned v; std::memcpy(&v, &f, 4); return v; }

// What a lane publishes for one warp-wide instruction. Two banks alternate, so one barrier
// an exchange suffices: a lane writes bank p again only after the next exchange's barrier,
// which every lane reaches after it has read bank p.
struct LaneSlot { const void* row; unsigned a[4]; unsigned b[2]; };
static LaneSlot lane_slots[2][1024];
static thread_local unsigned lane_bank = 0;

// Publishes `mine`, waits for the warp, returns the warp's 32 slots.
static inline const LaneSlot* warp_exchange(const LaneSlot& mine) {
    const unsigned t = threadIdx.x, warp = t / 32;
    LaneSlot* bank = lane_slots[lane_bank];
    lane_bank ^= 1;
    bank[t] = mine;
    warp_barriers[warp]->arrive_and_wait();
    return bank + warp * 32;
}

static inline float bf16_bits_to_float(unsigned h) { return __uint_as_float((h & 0xffffu) << 16); }

static inline float f16_bits_to_float(unsigned h) {
    const unsigned s = (h >> 15) & 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    float v;
    if (e == 0) v = std::ldexp((float)m, -24);                      // zero, subnormal
    else if (e == 31) v = m ? NAN : INFINITY;
    else v = std::ldexp((float)(m | 0x400u), (int)e - 25);
    return s ? -v : v;
}

static inline unsigned to_tf32(unsigned u) {
    if ((u & 0x7f800000u) == 0x7f800000u) return u;  // inf and NaN stay
    // Half an ulp of tf32 added to the magnitude, then truncated: ties away from zero;
    // past the largest tf32 the exponent carries into infinity, as cvt.rna does.
    return (u + 0x1000u) & ~0x1fffu;
}

enum EmuKind { EMU_TF32, EMU_F16, EMU_BF16 };

// Element (row, k) of A and (k, n) of B in the warp's fragments, and D += A * B.
template <int KIND>
static inline void emulated_mma(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    LaneSlot mine{};
    for (int i = 0; i < 4; ++i) mine.a[i] = a[i];
    for (int i = 0; i < 2; ++i) mine.b[i] = b[i];
    const LaneSlot* s = warp_exchange(mine);
    constexpr int KN = KIND == EMU_TF32 ? 8 : 16;
    auto value = [](unsigned bits) -> double {
        if (KIND == EMU_BF16) return bf16_bits_to_float(bits);
        if (KIND == EMU_F16) return f16_bits_to_float(bits);
        return __uint_as_float(bits & ~0x1fffu);
    };
    auto A = [&](int row, int k) -> double {
        if (KIND == EMU_TF32) return value(s[(row % 8) * 4 + k % 4].a[row / 8 + 2 * (k / 4)]);
        const unsigned reg = s[(row % 8) * 4 + (k % 8) / 2].a[row / 8 + 2 * (k / 8)];
        return value(reg >> (16 * (k % 2)));
    };
    auto B = [&](int k, int n) -> double {
        if (KIND == EMU_TF32) return value(s[n * 4 + k % 4].b[k / 4]);
        const unsigned reg = s[n * 4 + (k % 8) / 2].b[k / 8];
        return value(reg >> (16 * (k % 2)));
    };
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    float out[4];
    for (int i = 0; i < 4; ++i) {
        const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
        double sum = d[i];
        for (int k = 0; k < KN; ++k) sum += A(row, k) * B(k, col);
        out[i] = (float)sum;
    }
    // Every lane has read the fragments before any lane returns and writes the bank again
    // (two exchanges later), so no second barrier is needed.
    for (int i = 0; i < 4; ++i) d[i] = out[i];
}

static inline void mma_m16n8k16_bf16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    emulated_mma<EMU_BF16>(d, a, b);
}
static inline void mma_m16n8k16_f16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    emulated_mma<EMU_F16>(d, a, b);
}
static inline void mma_m16n8k8_tf32(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    emulated_mma<EMU_TF32>(d, a, b);
}

static inline void check_aligned16(const void* p, const char* what) {
    if (reinterpret_cast<std::uintptr_t>(p) % 16 != 0) {
        std::fprintf(stderr, "%s: address %p is not 16-byte aligned\n", what, p);
        std::abort();
    }
}

struct ChunkUse {
    unsigned block = ~0u;
    unsigned read_epoch = ~0u, read_warps = 0;  // warps (bits) that read it in read_epoch
    unsigned write_epoch = ~0u, writer = ~0u;
    bool in_flight = false;
};
static std::mutex chunk_mutex;
static std::unordered_map<std::uintptr_t, ChunkUse> chunk_uses;

static inline unsigned block_serial() {
    return blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
}

[[noreturn]] static inline void race(const char* what, const void* p) {
    std::fprintf(stderr, "race: %s (shared address %p, block %u, thread %u, interval %u)\n",
                 what, p, block_serial(), threadIdx.x, sync_epoch);
    std::abort();
}

// The record of the chunk at `p` for this block (entries of earlier blocks start over).
static inline ChunkUse& chunk_use(const void* p) {
    ChunkUse& u = chunk_uses[reinterpret_cast<std::uintptr_t>(p) & ~std::uintptr_t{15}];
    if (u.block != block_serial()) u = ChunkUse{block_serial()};
    return u;
}

static inline void note_read(const void* p) {
    std::lock_guard<std::mutex> lock(chunk_mutex);
    ChunkUse& u = chunk_use(p);
    const unsigned warp = threadIdx.x / 32;
    if (u.in_flight) race("ldmatrix reads a chunk whose cp.async has not landed", p);
    if (u.write_epoch == sync_epoch && u.writer != warp)
        race("ldmatrix reads a chunk another warp refilled since the last barrier", p);
    if (u.read_epoch != sync_epoch) u.read_epoch = sync_epoch, u.read_warps = 0;
    u.read_warps |= 1u << warp;
}

static inline void note_refill(const void* p) {
    std::lock_guard<std::mutex> lock(chunk_mutex);
    ChunkUse& u = chunk_use(p);
    const unsigned warp = threadIdx.x / 32;
    if (u.read_epoch == sync_epoch && (u.read_warps & ~(1u << warp)))
        race("cp.async refills a chunk another warp read since the last barrier", p);
    u.write_epoch = sync_epoch, u.writer = warp, u.in_flight = true;
}

static inline void note_landed(const void* p) {
    std::lock_guard<std::mutex> lock(chunk_mutex);
    chunk_use(p).in_flight = false;
}

static inline void ldmatrix_x4(unsigned (&r)[4], const void* row) {
    check_aligned16(row, "ldmatrix");
    note_read(row);
    LaneSlot mine{};
    mine.row = row;
    const LaneSlot* s = warp_exchange(mine);
    const int lane = threadIdx.x % 32;
    for (int i = 0; i < 4; ++i) {
        const unsigned char* p = static_cast<const unsigned char*>(s[8 * i + lane / 4].row);
        std::memcpy(&r[i], p + 4 * (lane % 4), 4);
    }
}

struct AsyncCopy { void* dst; const void* src; bool pred; };
static thread_local std::vector<AsyncCopy> cp_issued;            // not yet committed
static thread_local std::deque<std::vector<AsyncCopy>> cp_groups;  // committed, oldest first

static inline void cp_async_16(void* dst, const void* src, bool pred) {
    check_aligned16(dst, "cp.async destination");
    if (pred) check_aligned16(src, "cp.async source");
    // Until the wait that makes it land, the destination holds garbage on a GPU: NaN here
    // (all ones is NaN in f32, f16 and bf16), so that a read before the wait, or another
    // warp still reading a stage that is being refilled, shows in the result.
    note_refill(dst);
    std::memset(dst, 0xFF, 16);
    cp_issued.push_back({dst, src, pred});
}

// A plain store: the chunk is refilled and has landed at once (the race check sees it as
// a refill, so a store into a stage another warp still reads is caught as for cp.async).
static inline void st_shared_16(void* dst, uint4 v) {
    check_aligned16(dst, "st.shared destination");
    note_refill(dst);
    std::memcpy(dst, &v, 16);
    note_landed(dst);
}

static inline void cp_async_commit() {
    cp_groups.push_back(std::move(cp_issued));
    cp_issued.clear();
}

template <int N>
static inline void cp_async_wait() {
    while (cp_groups.size() > (size_t)N) {
        for (const AsyncCopy& c : cp_groups.front()) {
            if (c.pred) std::memcpy(c.dst, c.src, 16);
            else std::memset(c.dst, 0, 16);
            note_landed(c.dst);
        }
        cp_groups.pop_front();
    }
}
