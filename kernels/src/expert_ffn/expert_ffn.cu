// Grouped expert FFN over every expert in one launch per matrix, driven by the dispatch schedule
// (see router_topk.cu): sched = [n_tiles, offsets[E + 1], tile_expert[max_tiles],
// tile_row0[max_tiles]]; a tile is up to 64 sorted rows of one expert. Blocks past n_tiles exit.
//
// w13: act[row][f] = silu(x[token(row)] · w1[e][f]) · (x[token(row)] · w3[e][f])
// w2:  out[row][h] = route_w[slot(row)] · (act[row] · w2[e][h])
// Weights are [E, N, K] (one expert after another); x is f32 [T, H]; act is the weight dtype on
// the tensor-core path and f32 on the SIMT path; out is f32 [T·k, H] in sorted-row order.

struct Tile {
    u32 expert, row0, row_end;
};
__device__ __forceinline__ bool tile_of(const u32* sched, u32 E, u32 max_tiles, u32 tile_rows,
                                        u32 idx, Tile& t) {
    if (idx >= sched[0]) return false;
    const u32* offsets = sched + 1;
    t.expert = sched[2 + E + idx];
    t.row0 = sched[2 + E + max_tiles + idx];
    t.row_end = min(t.row0 + tile_rows, offsets[t.expert + 1]);
    return true;
}

// ---- SIMT (any dtype, any shape): a warp per output feature, rows 8 at a time.
// grid: (max_tiles, ceil(N / warps)).
template <typename W>
__device__ void w13_simt_impl(const float* __restrict__ x, const W* __restrict__ w1,
                              const W* __restrict__ w3, const u32* __restrict__ sched,
                              const u32* __restrict__ sorted_slots, float* __restrict__ act,
                              u32 E, u32 max_tiles, u32 tile_rows, u32 F, u32 H, u32 top_k) {
    Tile tl;
    if (!tile_of(sched, E, max_tiles, tile_rows, blockIdx.x, tl)) return;
    const u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const u32 f = blockIdx.y * (blockDim.x >> 5) + warp;
    if (f >= F) return;
    const W* g_row = w1 + ((u64)tl.expert * F + f) * H;
    const W* u_row = w3 + ((u64)tl.expert * F + f) * H;
    for (u32 r0 = tl.row0; r0 < tl.row_end; r0 += 8) {
        const u32 nr = min(8u, tl.row_end - r0);
        const float* xr[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) xr[j] = x + (u64)(sorted_slots[r0 + (j < nr ? j : 0)] / top_k) * H;
        float ag[8], au[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) ag[j] = au[j] = 0.f;
        for (u32 k = lane; k < H; k += 32) {
            const float gv = to_f32(g_row[k]), uv = to_f32(u_row[k]);
#pragma unroll
            for (int j = 0; j < 8; ++j)
                if (j < nr) {
                    const float xv = xr[j][k];
                    ag[j] += gv * xv;
                    au[j] += uv * xv;
                }
        }
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const float gs = warp_sum(ag[j]), us = warp_sum(au[j]);
            if (lane == 0 && j < nr) act[(u64)(r0 + j) * F + f] = silu(gs) * us;
        }
    }
}

template <typename W>
__device__ void w2_simt_impl(const float* __restrict__ act, const W* __restrict__ w2,
                             const u32* __restrict__ sched, const u32* __restrict__ sorted_slots,
                             const float* __restrict__ route_w, float* __restrict__ out, u32 E,
                             u32 max_tiles, u32 tile_rows, u32 H, u32 F) {
    Tile tl;
    if (!tile_of(sched, E, max_tiles, tile_rows, blockIdx.x, tl)) return;
    const u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const u32 h = blockIdx.y * (blockDim.x >> 5) + warp;
    if (h >= H) return;
    const W* w_row = w2 + ((u64)tl.expert * H + h) * F;
    for (u32 r0 = tl.row0; r0 < tl.row_end; r0 += 8) {
        const u32 nr = min(8u, tl.row_end - r0);
        float acc[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[j] = 0.f;
        for (u32 k = lane; k < F; k += 32) {
            const float wv = to_f32(w_row[k]);
#pragma unroll
            for (int j = 0; j < 8; ++j)
                if (j < nr) acc[j] += wv * act[(u64)(r0 + j) * F + k];
        }
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const float s = warp_sum(acc[j]);
            if (lane == 0 && j < nr) {
                const u32 r = r0 + j;
                out[(u64)r * H + h] = s * route_w[sorted_slots[r]];
            }
        }
    }
}

#define EXPERT_SIMT(S, W)                                                                    \
    extern "C" __global__ void w13_simt_##S(const float* x, const W* w1, const W* w3,        \
                                            const u32* sched, const u32* sorted_slots,       \
                                            float* act, u32 E, u32 max_tiles, u32 tile_rows, \
                                            u32 F, u32 H, u32 top_k) {                       \
        w13_simt_impl<W>(x, w1, w3, sched, sorted_slots, act, E, max_tiles, tile_rows, F, H, \
                         top_k);                                                             \
    }                                                                                        \
    extern "C" __global__ void w2_simt_##S(const float* act, const W* w2, const u32* sched,  \
                                           const u32* sorted_slots, const float* route_w,    \
                                           float* out, u32 E, u32 max_tiles, u32 tile_rows,  \
                                           u32 H, u32 F) {                                   \
        w2_simt_impl<W>(act, w2, sched, sorted_slots, route_w, out, E, max_tiles, tile_rows, \
                        H, F);                                                               \
    }
FOR_EACH_WEIGHT(EXPERT_SIMT)

// ---- Tensor cores (16-bit weights; F, H multiples of 32): a block is 4 warps × 16 features
// and one tile of up to 8·NT rows (NT n-tiles: 1 for decode-sized batches, 8 otherwise). grid: (max_tiles, N / 64, splits) — the tiles of one
// feature block run next to each other, so a weight slice read by one tile is still in L2 for
// the expert's next tile. When few tiles are routed (decode), K is split over grid.z so that
// enough warps stream weights: w13 then writes f32 partial sums of gate and up
// (part[z][row][2F], gate at f, up at F + f) and w2 finishes SwiGLU as it loads them; w2 writes
// its partials to out[z] and combine adds them.
//
// Weights are read PREFETCH k-slices (32 wide) ahead into registers, so each warp keeps several
// 16-byte loads per thread in flight while its tensor cores work on the slice before. Measured
// on an H100 at the Mixtral shape, one token, same split targets: 2 slices 0.377 ms, 4 slices
// 0.388, 8 slices 0.430 (deeper costs registers, hence resident warps). 64-row tiles at
// 1024 × 3584 measured 0.70 / 0.69 ms (512 tokens) and 4.25 / 5.0 ms (4096) with 2 / 4 slices.

#ifndef PREFETCH
#define PREFETCH 2
#endif

template <typename W, int NT>
__device__ void w13_tc_impl(const float* __restrict__ x, const W* __restrict__ w1,
                            const W* __restrict__ w3, const u32* __restrict__ sched,
                            const u32* __restrict__ sorted_slots, W* __restrict__ act,
                            float* __restrict__ part, u32 E, u32 max_tiles, u32 tile_rows,
                            u32 F, u32 H, u32 top_k, u32 k_chunk) {
    Tile tl;
    if (!tile_of(sched, E, max_tiles, tile_rows, blockIdx.x, tl)) return;
    const u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    const u32 f0 = blockIdx.y * 64 + warp * 16;
    if (f0 >= F) return;
    const u32 k_begin = blockIdx.z * k_chunk;
    const u32 k_end = min(H, k_begin + k_chunk);
    const u32 rows = tl.row_end - tl.row0;
    const u32 tiles = (rows + 7) / 8;
    const float* xb[NT];
#pragma unroll
    for (int j = 0; j < NT; ++j) {
        const u32 r = j * 8 + g;
        xb[j] = r < rows ? x + (u64)(sorted_slots[tl.row0 + r] / top_k) * H + 8 * q : nullptr;
    }
    float cg[NT][4], cu[NT][4];
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) cg[j][i] = cu[j][i] = 0.f;
    const W* gb = w1 + ((u64)tl.expert * F + f0) * H + 8 * q;
    const W* ub = w3 + ((u64)tl.expert * F + f0) * H + 8 * q;
    AFrag pg[PREFETCH], pu[PREFETCH];
#pragma unroll
    for (int p = 0; p < PREFETCH; ++p) {
        const u32 k = k_begin + 32 * p;
        if (k < k_end) {
            pg[p] = load_a(gb, H, g, k);
            pu[p] = load_a(ub, H, g, k);
        }
    }
    for (u32 k0 = k_begin; k0 < k_end; k0 += 32 * PREFETCH) {
#pragma unroll
        for (int p = 0; p < PREFETCH; ++p) {
            const u32 k = k0 + 32 * p;
            if (k < k_end) {
                const AFrag ag = pg[p], au = pu[p];
                if (k + 32 * PREFETCH < k_end) {
                    pg[p] = load_a(gb, H, g, k + 32 * PREFETCH);
                    pu[p] = load_a(ub, H, g, k + 32 * PREFETCH);
                }
#pragma unroll
                for (int j = 0; j < NT; ++j) {
                    if (j < tiles) {
                        const uint4 b = xb[j] ? load_b_f32<W>(xb[j] + k) : make_uint4(0, 0, 0, 0);
                        mma_k32<W>(cg[j], ag, b);
                        mma_k32<W>(cu[j], au, b);
                    }
                }
            }
        }
    }
    W tag;
    u16* out = reinterpret_cast<u16*>(act);
    float* pz = part + (u64)blockIdx.z * max_tiles * tile_rows * 2 * F;
#pragma unroll
    for (int j = 0; j < NT; ++j) {
        if (j < tiles) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const u32 r = j * 8 + 2 * q + h;
                if (r < rows) {
                    const u64 row = tl.row0 + r;
                    const float g0 = cg[j][h], g8 = cg[j][2 + h], u0 = cu[j][h], u8 = cu[j][2 + h];
                    if (gridDim.z == 1) {
                        out[row * F + f0 + g] = to_half_bits(silu(g0) * u0, tag);
                        out[row * F + f0 + g + 8] = to_half_bits(silu(g8) * u8, tag);
                    } else {
                        float* pr = pz + row * 2 * F;
                        pr[f0 + g] = g0;
                        pr[f0 + g + 8] = g8;
                        pr[F + f0 + g] = u0;
                        pr[F + f0 + g + 8] = u8;
                    }
                }
            }
        }
    }
}

// 8 SwiGLU activations of `row` at k from the w13 partial sums, packed to the weight dtype.
template <typename W>
__device__ __forceinline__ uint4 act_from_parts(const float* part, u64 part_stride, u32 splits,
                                                u64 row, u32 F, u32 k) {
    float gs[8], us[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) gs[i] = us[i] = 0.f;
    for (u32 z = 0; z < splits; ++z) {
        const float* pr = part + z * part_stride + row * 2 * F;
        const float4 g0 = __ldg(reinterpret_cast<const float4*>(pr + k));
        const float4 g1 = __ldg(reinterpret_cast<const float4*>(pr + k + 4));
        const float4 u0 = __ldg(reinterpret_cast<const float4*>(pr + F + k));
        const float4 u1 = __ldg(reinterpret_cast<const float4*>(pr + F + k + 4));
        gs[0] += g0.x; gs[1] += g0.y; gs[2] += g0.z; gs[3] += g0.w;
        gs[4] += g1.x; gs[5] += g1.y; gs[6] += g1.z; gs[7] += g1.w;
        us[0] += u0.x; us[1] += u0.y; us[2] += u0.z; us[3] += u0.w;
        us[4] += u1.x; us[5] += u1.y; us[6] += u1.z; us[7] += u1.w;
    }
    W tag;
    float a[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) a[i] = silu(gs[i]) * us[i];
    return make_uint4(pack2(a[0], a[1], tag), pack2(a[2], a[3], tag), pack2(a[4], a[5], tag),
                      pack2(a[6], a[7], tag));
}

template <typename W, int NT>
__device__ void w2_tc_impl(const W* __restrict__ act, const float* __restrict__ part,
                           u32 part_splits, const W* __restrict__ w2,
                           const u32* __restrict__ sched, const u32* __restrict__ sorted_slots,
                           const float* __restrict__ route_w, float* __restrict__ out, u32 E,
                           u32 max_tiles, u32 tile_rows, u32 H, u32 F, u32 k_chunk) {
    Tile tl;
    if (!tile_of(sched, E, max_tiles, tile_rows, blockIdx.x, tl)) return;
    const u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    const u32 h0 = blockIdx.y * 64 + warp * 16;
    if (h0 >= H) return;
    const u32 k_begin = blockIdx.z * k_chunk;
    const u32 k_end = min(F, k_begin + k_chunk);
    const u32 rows = tl.row_end - tl.row0;
    const u32 tiles = (rows + 7) / 8;
    const u64 part_stride = (u64)max_tiles * tile_rows * 2 * F;
    float c[NT][4];
#pragma unroll
    for (int j = 0; j < NT; ++j) c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.f;
    const W* wb = w2 + ((u64)tl.expert * H + h0) * F + 8 * q;
    AFrag pa[PREFETCH];
    // With one n-tile and the activations stored (no w13 partials), the activation slice is
    // prefetched with the weights: the loop then waits on nothing it did not ask for ahead.
    const bool pre_b = NT == 1 && part_splits <= 1 && g < rows;
    const W* ab = act + (u64)(tl.row0 + g) * F + 8 * q;
    uint4 pb[PREFETCH];
#pragma unroll
    for (int p = 0; p < PREFETCH; ++p) {
        const u32 k = k_begin + 32 * p;
        pb[p] = make_uint4(0, 0, 0, 0);
        if (k < k_end) {
            pa[p] = load_a(wb, F, g, k);
            if (pre_b) pb[p] = __ldg(reinterpret_cast<const uint4*>(ab + k));
        }
    }
    for (u32 k0 = k_begin; k0 < k_end; k0 += 32 * PREFETCH) {
#pragma unroll
        for (int p = 0; p < PREFETCH; ++p) {
            const u32 k = k0 + 32 * p;
            if (k < k_end) {
                const AFrag a = pa[p];
                const uint4 bp = pb[p];
                if (k + 32 * PREFETCH < k_end) {
                    pa[p] = load_a(wb, F, g, k + 32 * PREFETCH);
                    if (pre_b) pb[p] = __ldg(reinterpret_cast<const uint4*>(ab + k + 32 * PREFETCH));
                }
                if (NT == 1 && part_splits <= 1) {
                    mma_k32<W>(c[0], a, bp);
                    continue;
                }
#pragma unroll
                for (int j = 0; j < NT; ++j) {
                    if (j < tiles) {
                        const u32 r = j * 8 + g;
                        uint4 b = make_uint4(0, 0, 0, 0);
                        if (r < rows) {
                            const u64 row = tl.row0 + r;
                            b = part_splits > 1
                                ? act_from_parts<W>(part, part_stride, part_splits, row, F, k + 8 * q)
                                : __ldg(reinterpret_cast<const uint4*>(act + row * F + k + 8 * q));
                        }
                        mma_k32<W>(c[j], a, b);
                    }
                }
            }
        }
    }
    float* oz = out + (u64)blockIdx.z * max_tiles * tile_rows * H;
#pragma unroll
    for (int j = 0; j < NT; ++j) {
        if (j < tiles) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const u32 r = j * 8 + 2 * q + h;
                if (r < rows) {
                    const u32 row = tl.row0 + r;
                    const float s = route_w[sorted_slots[row]];
                    oz[(u64)row * H + h0 + g] = c[j][h] * s;
                    oz[(u64)row * H + h0 + g + 8] = c[j][2 + h] * s;
                }
            }
        }
    }
}

#define EXPERT_TC_NT(S, W, NT)                                                               \
    extern "C" __global__ void __launch_bounds__(128)                                        \
        w13_tc_##S##_nt##NT(const float* x, const W* w1, const W* w3, const u32* sched,      \
                            const u32* sorted_slots, W* act, float* part, u32 E,             \
                            u32 max_tiles, u32 tile_rows, u32 F, u32 H, u32 top_k,           \
                            u32 k_chunk) {                                                   \
        w13_tc_impl<W, NT>(x, w1, w3, sched, sorted_slots, act, part, E, max_tiles,          \
                           tile_rows, F, H, top_k, k_chunk);                                 \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(128)                                        \
        w2_tc_##S##_nt##NT(const W* act, const float* part, u32 part_splits, const W* w2,    \
                           const u32* sched, const u32* sorted_slots, const float* route_w,  \
                           float* out, u32 E, u32 max_tiles, u32 tile_rows, u32 H, u32 F,    \
                           u32 k_chunk) {                                                    \
        w2_tc_impl<W, NT>(act, part, part_splits, w2, sched, sorted_slots, route_w, out, E,  \
                          max_tiles, tile_rows, H, F, k_chunk);                              \
    }
#define EXPERT_TC(S, W) EXPERT_TC_NT(S, W, 1) EXPERT_TC_NT(S, W, 8)
FOR_EACH_HALF(EXPERT_TC)

// ---- Decode GEMV (16-bit weights, tiles of at most 8 rows): a warp per FPW output features of
// both w1 and w3 (or of w2), each lane streaming 16-byte pieces so that a warp reads 512
// contiguous bytes of a row per step, and the tile's rows dotted against every piece in f32.
// The tensor-core tiles above read 16 rows 64 bytes at a time per warp, which keeps fewer bytes
// of each DRAM page in use at decode sizes. grid: (max_tiles, ceil(N / (warps · FPW))).
template <typename W, int FPW, int NR>
__device__ void w13_gemv_impl(const float* __restrict__ x, const W* __restrict__ w1,
                              const W* __restrict__ w3, const u32* __restrict__ sched,
                              const u32* __restrict__ sorted_slots, W* __restrict__ act, u32 E,
                              u32 max_tiles, u32 tile_rows, u32 F, u32 H, u32 top_k) {
    Tile tl;
    if (!tile_of(sched, E, max_tiles, tile_rows, blockIdx.x, tl)) return;
    const u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const u32 f0 = (blockIdx.y * (blockDim.x >> 5) + warp) * FPW;
    if (f0 >= F) return;
    const u32 nr = min((u32)NR, tl.row_end - tl.row0);
    const float* xr[NR];
#pragma unroll
    for (int j = 0; j < NR; ++j)
        xr[j] = x + (u64)(sorted_slots[tl.row0 + (j < nr ? j : 0)] / top_k) * H;
    const W* rows[2 * FPW];
#pragma unroll
    for (int i = 0; i < FPW; ++i) {
        const u32 f = min(f0 + i, F - 1);
        rows[i] = w1 + ((u64)tl.expert * F + f) * H;
        rows[FPW + i] = w3 + ((u64)tl.expert * F + f) * H;
    }
    float acc[2 * FPW][NR];
    gemv_lane<W, float, 2 * FPW, NR>(rows, xr, nr, H, acc);
    W tag;
    u16* out = reinterpret_cast<u16*>(act);
#pragma unroll
    for (int j = 0; j < NR; ++j) {
        if (j < nr) {
#pragma unroll
            for (int i = 0; i < FPW; ++i) {
                const float g = warp_sum(acc[i][j]), u = warp_sum(acc[FPW + i][j]);
                if (lane == 0 && f0 + i < F)
                    out[(u64)(tl.row0 + j) * F + f0 + i] = to_half_bits(silu(g) * u, tag);
            }
        }
    }
}

template <typename W, int FPW, int NR>
__device__ void w2_gemv_impl(const W* __restrict__ act, const W* __restrict__ w2,
                             const u32* __restrict__ sched, const u32* __restrict__ sorted_slots,
                             const float* __restrict__ route_w, float* __restrict__ out, u32 E,
                             u32 max_tiles, u32 tile_rows, u32 H, u32 F) {
    Tile tl;
    if (!tile_of(sched, E, max_tiles, tile_rows, blockIdx.x, tl)) return;
    const u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const u32 h0 = (blockIdx.y * (blockDim.x >> 5) + warp) * FPW;
    if (h0 >= H) return;
    const u32 nr = min((u32)NR, tl.row_end - tl.row0);
    const W* rows[FPW];
#pragma unroll
    for (int i = 0; i < FPW; ++i) rows[i] = w2 + ((u64)tl.expert * H + min(h0 + i, H - 1)) * F;
    const W* ar[NR];
#pragma unroll
    for (int j = 0; j < NR; ++j) ar[j] = act + (u64)(tl.row0 + j) * F;
    float acc[FPW][NR];
    gemv_lane<W, W, FPW, NR>(rows, ar, nr, F, acc);
#pragma unroll
    for (int j = 0; j < NR; ++j) {
        if (j < nr) {
            const u32 row = tl.row0 + j;
            const float s = route_w[sorted_slots[row]];
#pragma unroll
            for (int i = 0; i < FPW; ++i) {
                const float v = warp_sum(acc[i][j]);
                if (lane == 0 && h0 + i < H) out[(u64)row * H + h0 + i] = v * s;
            }
        }
    }
}

#define EXPERT_GEMV_FPW(S, W, FPW, NR)                                                       \
    extern "C" __global__ void w13_gemv_##S##_f##FPW##_r##NR(                                \
        const float* x, const W* w1, const W* w3, const u32* sched, const u32* sorted_slots, \
        W* act, u32 E, u32 max_tiles, u32 tile_rows, u32 F, u32 H, u32 top_k) {              \
        w13_gemv_impl<W, FPW, NR>(x, w1, w3, sched, sorted_slots, act, E, max_tiles,         \
                                  tile_rows, F, H, top_k);                                   \
    }                                                                                        \
    extern "C" __global__ void w2_gemv_##S##_f##FPW##_r##NR(                                 \
        const W* act, const W* w2, const u32* sched, const u32* sorted_slots,                \
        const float* route_w, float* out, u32 E, u32 max_tiles, u32 tile_rows, u32 H, u32 F) { \
        w2_gemv_impl<W, FPW, NR>(act, w2, sched, sorted_slots, route_w, out, E, max_tiles,   \
                                 tile_rows, H, F);                                           \
    }
// Rows per tile held in registers: 1, 2, 4 or 8 (the launcher picks the least that holds the
// batch), so a single token keeps 2·FPW accumulators instead of 16·FPW.
#define EXPERT_GEMV_NR(S, W, FPW)                                                            \
    EXPERT_GEMV_FPW(S, W, FPW, 1) EXPERT_GEMV_FPW(S, W, FPW, 2)                              \
    EXPERT_GEMV_FPW(S, W, FPW, 4) EXPERT_GEMV_FPW(S, W, FPW, 8)
#define EXPERT_GEMV(S, W) EXPERT_GEMV_NR(S, W, 1) EXPERT_GEMV_NR(S, W, 2) EXPERT_GEMV_NR(S, W, 4)
FOR_EACH_HALF(EXPERT_GEMV)

// ---- Large batches through cuBLAS (one GEMM per expert; see cuda/moe.rs): the routed rows
// gathered into expert order in the weight dtype, and SwiGLU between the two GEMMs.
// grid: (n_rows, ceil(H / (8 · blockDim))).
template <typename W>
__device__ void gather_impl(const float* __restrict__ x, const u32* __restrict__ sorted_slots,
                            u32 top_k, u32 H, W* __restrict__ out) {
    const u64 row = blockIdx.x;
    const u32 k = (blockIdx.y * blockDim.x + threadIdx.x) * 8;
    if (k >= H) return;
    const float* src = x + (u64)(sorted_slots[row] / top_k) * H + k;
    *reinterpret_cast<uint4*>(out + row * H + k) = load_b_f32<W>(src);
}

// act = silu(g) · u over n pairs of 16-bit values (8 per thread).
template <typename W>
__device__ void swiglu_impl(const W* __restrict__ g, const W* __restrict__ u, W* __restrict__ act,
                            u64 n8) {
    W tag;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n8; i += (u64)gridDim.x * blockDim.x) {
        const uint4 gv = __ldg(reinterpret_cast<const uint4*>(g) + i);
        const uint4 uv = __ldg(reinterpret_cast<const uint4*>(u) + i);
        const u32 gw[4] = {gv.x, gv.y, gv.z, gv.w}, uw[4] = {uv.x, uv.y, uv.z, uv.w};
        u32 o[4];
#pragma unroll
        for (int j = 0; j < 4; ++j)
            o[j] = pack2(silu(lo_f32(gw[j], tag)) * lo_f32(uw[j], tag),
                         silu(hi_f32(gw[j], tag)) * hi_f32(uw[j], tag), tag);
        reinterpret_cast<uint4*>(act)[i] = make_uint4(o[0], o[1], o[2], o[3]);
    }
}

#define EXPERT_BLAS(S, W)                                                                    \
    extern "C" __global__ void gather_##S(const float* x, const u32* sorted_slots, u32 top_k, \
                                          u32 H, W* out) {                                   \
        gather_impl<W>(x, sorted_slots, top_k, H, out);                                      \
    }                                                                                        \
    extern "C" __global__ void swiglu_##S(const W* g, const W* u, W* act, u64 n8) {          \
        swiglu_impl<W>(g, u, act, n8);                                                       \
    }
FOR_EACH_HALF(EXPERT_BLAS)
