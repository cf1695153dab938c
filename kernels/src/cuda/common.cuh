// Shared by every kernel source; compiled by NVRTC without CUDA headers, so the 16-bit float
// types are raw bit patterns converted with PTX.
typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned long long u64;

struct bf16 { u16 bits; };
struct f16 { u16 bits; };

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __uint_as_float(((u32)x.bits) << 16); }
__device__ __forceinline__ float to_f32(f16 x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
    return f;
}

// Two f32 → one 32-bit pair of the 16-bit type, `lo` at the lower address (round to nearest even).
__device__ __forceinline__ u32 pack2(float lo, float hi, bf16) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
__device__ __forceinline__ u32 pack2(float lo, float hi, f16) {
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
__device__ __forceinline__ float lo_f32(u32 pair, bf16) { return __uint_as_float(pair << 16); }
__device__ __forceinline__ float hi_f32(u32 pair, bf16) { return __uint_as_float(pair & 0xffff0000u); }
__device__ __forceinline__ float lo_f32(u32 pair, f16) { f16 h; h.bits = (u16)(pair & 0xffff); return to_f32(h); }
__device__ __forceinline__ float hi_f32(u32 pair, f16) { f16 h; h.bits = (u16)(pair >> 16); return to_f32(h); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the total.
__device__ __forceinline__ float block_sum(float v, float* scratch /* [32] */) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    const int nw = blockDim.x >> 5;
    float t = lane < nw ? scratch[lane] : 0.f;
    return warp_sum(t);
}

// One instantiation per weight dtype: X(suffix, type).
#define FOR_EACH_WEIGHT(X) X(f32, float) X(bf16, bf16) X(f16, f16)
#define FOR_EACH_HALF(X) X(bf16, bf16) X(f16, f16)

// k-steps of the GEMV kernels unrolled, hence 16-byte loads in flight per lane and row.
#ifndef GEMV_UNROLL
#define GEMV_UNROLL 4
#endif

#define NEG_INF __int_as_float(0xff800000)

// Tensor-core tile helpers (mma.sync m16n8k16, f32 accumulate), used with weights as the A
// operand (16 output features per warp) and tokens as B (8 per n-tile).
//
// K is walked 32 at a time with each thread reading 8 contiguous values (16 bytes) of its rows:
// lane (g = lane / 4, q = lane % 4) holds features g and g + 8 at k0 + 8q … k0 + 8q + 7 and token g
// at the same k. A dot product does not care in which order it meets its terms, so the two
// m16n8k16 steps take the logical k slots {2q, 2q+1, 2q+8, 2q+9} from physical k0 + 8q + {0..3}
// and then + {4..7}, identically for A and B: one 16-byte load per row instead of four.
__device__ __forceinline__ void mma16816(float (&c)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0,
                                         u32 b1, bf16) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void mma16816(float (&c)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0,
                                         u32 b1, f16) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// A rows g and g + 8 of a 16-row weight slice, 8 values each at k.
struct AFrag {
    uint4 lo, hi;
};
template <typename W>
__device__ __forceinline__ AFrag load_a(const W* w, u64 ld, u32 g, u32 k) {
    AFrag a;
    a.lo = __ldg(reinterpret_cast<const uint4*>(w + (u64)g * ld + k));
    a.hi = __ldg(reinterpret_cast<const uint4*>(w + (u64)(g + 8) * ld + k));
    return a;
}
// 8 f32 activations at `x` → 4 packed 16-bit pairs.
template <typename W>
__device__ __forceinline__ uint4 load_b_f32(const float* x) {
    const float4 a = *reinterpret_cast<const float4*>(x);
    const float4 b = *reinterpret_cast<const float4*>(x + 4);
    W tag;
    return make_uint4(pack2(a.x, a.y, tag), pack2(a.z, a.w, tag), pack2(b.x, b.y, tag),
                      pack2(b.z, b.w, tag));
}
// Both m16n8k16 steps of one 32-wide k slice.
template <typename W>
__device__ __forceinline__ void mma_k32(float (&c)[4], const AFrag& a, const uint4& b) {
    W tag;
    mma16816(c, a.lo.x, a.hi.x, a.lo.y, a.hi.y, b.x, b.y, tag);
    mma16816(c, a.lo.z, a.hi.z, a.lo.w, a.hi.w, b.z, b.w, tag);
}

__device__ __forceinline__ float silu(float g) { return g / (1.f + expf(-g)); }
__device__ __forceinline__ u16 to_half_bits(float v, bf16 tag) { return (u16)(pack2(v, 0.f, tag) & 0xffff); }
__device__ __forceinline__ u16 to_half_bits(float v, f16 tag) { return (u16)(pack2(v, 0.f, tag) & 0xffff); }

// 8 consecutive weights (16-byte aligned) widened to f32.
__device__ __forceinline__ void load8(const float* p, float (&w)[8]) {
    const float4 a = __ldg(reinterpret_cast<const float4*>(p));
    const float4 b = __ldg(reinterpret_cast<const float4*>(p + 4));
    w[0] = a.x; w[1] = a.y; w[2] = a.z; w[3] = a.w;
    w[4] = b.x; w[5] = b.y; w[6] = b.z; w[7] = b.w;
}
template <typename W>
__device__ __forceinline__ void load8(const W* p, float (&w)[8]) {
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
    W tag;
    w[0] = lo_f32(v.x, tag); w[1] = hi_f32(v.x, tag);
    w[2] = lo_f32(v.y, tag); w[3] = hi_f32(v.y, tag);
    w[4] = lo_f32(v.z, tag); w[5] = hi_f32(v.z, tag);
    w[6] = lo_f32(v.w, tag); w[7] = hi_f32(v.w, tag);
}

// One lane's share of R dot products against up to NR input rows (the first `nr` used):
// acc[i][j] += Σ rows[i][k] · xs[j][k] over k = 8·lane + 256·s, 16-byte weight pieces, so a
// warp reads 512 contiguous bytes of each row per step. Inputs are f32 or the weight dtype.
// acc starts at zero; the caller sums it over the warp.
template <typename W, typename X, int R, int NR>
__device__ __forceinline__ void gemv_lane(const W* const (&rows)[R], const X* const (&xs)[NR],
                                          u32 nr, u32 K, float (&acc)[R][NR]) {
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
        for (int j = 0; j < NR; ++j) acc[i][j] = 0.f;
#pragma unroll GEMV_UNROLL
    for (u32 k = (threadIdx.x & 31) * 8; k < K; k += 256) {
        float w[R][8];
#pragma unroll
        for (int i = 0; i < R; ++i) load8(rows[i] + k, w[i]);
#pragma unroll
        for (int j = 0; j < NR; ++j) {
            if ((u32)j < nr) {
                float xv[8];
                load8(xs[j] + k, xv);
#pragma unroll
                for (int i = 0; i < R; ++i)
#pragma unroll
                    for (int t = 0; t < 8; ++t) acc[i][j] = fmaf(w[i][t], xv[t], acc[i][j]);
            }
        }
    }
}
