// The router of one MoE layer in one launch per token block: gate logits (x · gateᵀ), scores
// (softmax, or a sigmoid per expert: flags bit 1), top-k (ties to the lower id), renormalisation
// (flags bit 0), the load-balance counters (accumulated on the
// device, read only when asked) and each slot's place in its expert's group (the counts feed the
// dispatch kernel below).
//
// Counters per layer, in one buffer: tokens (u64), expert_tokens[E] (u64), coselect[E·E] (u64),
// prob_mass[E] (f64), entropy (f64).

#define ROUTER_MAX_E 256
#define ROUTER_MAX_K 16

__device__ void dispatch_body(const u32* ids, const u32* pos, u32* counts, u32 n_slots, u32 E,
                              u32 tile, u32 max_tiles, u32* sorted_slots, u32* slot_rows,
                              u32* sched);

template <typename W>
__device__ void router_impl(const float* __restrict__ x, const W* __restrict__ gate, u32 H, u32 E,
                            u32 K, u32 flags, float* __restrict__ logits_out, u32* __restrict__ ids,
                            float* __restrict__ weights, u32* __restrict__ counts,
                            u32* __restrict__ pos, u64* __restrict__ stats,
                            u32* __restrict__ done, u32 max_tiles, u32 tile_rows,
                            u32* __restrict__ sorted_slots,
                            u32* __restrict__ slot_rows, u32* __restrict__ sched) {
    __shared__ float s_logit[ROUTER_MAX_E];
    __shared__ float s_prob[ROUTER_MAX_E];
    __shared__ u32 s_pick[ROUTER_MAX_K];
    const u64 t = blockIdx.x;
    const u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    const float* xr = x + t * H;
    // Gate logits: a warp per expert; with H a multiple of 8, each lane reads 8 consecutive
    // weights at a time (16-byte loads for 16-bit weights) to keep loads in flight.
    for (u32 e = warp; e < E; e += nw) {
        const W* gr = gate + (u64)e * H;
        float s0 = 0.f, s1 = 0.f;
        if (H % 8 == 0) {
            for (u32 k = lane * 8; k < H; k += 256) {
                float w[8];
                load8(gr + k, w);
                const float4 a = *reinterpret_cast<const float4*>(xr + k);
                const float4 b = *reinterpret_cast<const float4*>(xr + k + 4);
                s0 += a.x * w[0] + a.y * w[1] + a.z * w[2] + a.w * w[3];
                s1 += b.x * w[4] + b.y * w[5] + b.z * w[6] + b.w * w[7];
            }
        } else {
            for (u32 k = lane; k < H; k += 32) s0 += xr[k] * to_f32(gr[k]);
        }
        const float s = warp_sum(s0 + s1);
        if (lane == 0) s_logit[e] = s;
    }
    __syncthreads();
    // Warp 0 finishes the token: lane l holds experts l, l + 32, …
    if (warp == 0) {
        constexpr int PER = ROUTER_MAX_E / 32;
        float p[PER];
        float m = NEG_INF;
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            const u32 e = lane + 32 * i;
            p[i] = e < E ? s_logit[e] : NEG_INF;
            m = fmaxf(m, p[i]);
        }
        m = warp_max(m);
        const bool sigmoid = flags & 2u;
        float z = 0.f;
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            const u32 e = lane + 32 * i;
            p[i] = e < E ? (sigmoid ? 1.f / (1.f + expf(-p[i])) : expf(p[i] - m)) : 0.f;
            z += p[i];
        }
        z = warp_sum(z);
        // s_prob: the scores the top-k ranks; the counters see them normalised by z (a no-op
        // for a softmax's probabilities after the division below).
        const float zc = sigmoid ? z : 1.f;
        if (!sigmoid) {
#pragma unroll
            for (int i = 0; i < PER; ++i) p[i] = p[i] / z;
        }
        double entropy = 0.0;
        double* prob_mass = (double*)(stats + 1 + E + (u64)E * E);
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            const u32 e = lane + 32 * i;
            if (e < E) {
                s_prob[e] = p[i];
                const double q = (double)p[i] / (double)zc;
                atomicAdd(&prob_mass[e], q);
                if (logits_out) logits_out[t * E + e] = s_logit[e];
                if (q > 0.0) entropy -= q * log(q);
            }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) entropy += __shfl_xor_sync(0xffffffffu, entropy, o);
        // Top-k by repeated warp argmax; ties go to the lower id.
        u32 taken = 0;
        float top_sum = 0.f;
        for (u32 j = 0; j < K; ++j) {
            float best = -1.f;
            u32 best_e = 0xffffffffu;
#pragma unroll
            for (int i = 0; i < PER; ++i) {
                const u32 e = lane + 32 * i;
                if (e < E && !(taken & (1u << i)) && p[i] > best) {
                    best = p[i];
                    best_e = e;
                }
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) {
                const float ob = __shfl_xor_sync(0xffffffffu, best, o);
                const u32 oe = __shfl_xor_sync(0xffffffffu, best_e, o);
                if (ob > best || (ob == best && oe < best_e)) {
                    best = ob;
                    best_e = oe;
                }
            }
            if ((best_e & 31) == lane) taken |= 1u << (best_e >> 5);
            if (lane == 0) s_pick[j] = best_e;
            top_sum += best;
        }
        __syncwarp();
        u64* expert_tokens = stats + 1;
        u64* coselect = expert_tokens + E;
        if (lane < K) {
            const u32 e = s_pick[lane];
            ids[t * K + lane] = e;
            weights[t * K + lane] = (flags & 1u) ? s_prob[e] / top_sum : s_prob[e];
            pos[t * K + lane] = atomicAdd(&counts[e], 1u);
            atomicAdd(&expert_tokens[e], 1ull);
            for (u32 i = 0; i < K; ++i)
                if (i != lane) atomicAdd(&coselect[(u64)e * E + s_pick[i]], 1ull);
        }
        if (lane == 0) {
            atomicAdd(stats, 1ull);
            atomicAdd((double*)(coselect + (u64)E * E + E), entropy);
        }
    }
    // The last block to finish groups every slot by expert (dispatch), saving a launch.
    __shared__ bool s_last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) s_last = atomicAdd(done, 1u) == gridDim.x - 1;
    __syncthreads();
    if (s_last) {
        __threadfence();
        dispatch_body(ids, pos, counts, gridDim.x * K, E, tile_rows, max_tiles, sorted_slots,
                      slot_rows, sched);
        if (threadIdx.x == 0) *done = 0;
    }
}

#define ROUTER(S, W)                                                                         \
    extern "C" __global__ void router_topk_##S(                                              \
        const float* x, const W* gate, u32 H, u32 E, u32 K, u32 flags, float* logits_out,    \
        u32* ids, float* weights, u32* counts, u32* pos, u64* stats, u32* done,              \
        u32 max_tiles, u32 tile_rows, u32* sorted_slots, u32* slot_rows, u32* sched) {       \
        router_impl<W>(x, gate, H, E, K, flags, logits_out, ids, weights, counts, pos, stats, done, \
                       max_tiles, tile_rows, sorted_slots, slot_rows, sched);                \
    }
FOR_EACH_WEIGHT(ROUTER)

// Dispatch (run by the router's last block): expert offsets from the counts, each slot's sorted
// row and its inverse, and the tile schedule of the grouped GEMMs (tiles of `tile` rows, never
// across experts): sched = [n_tiles, offsets[E + 1], tile_expert[max_tiles],
// tile_row0[max_tiles]]. The counts are zeroed for the next call. Rows of one expert follow the
// order the router's atomics gave; each row is computed on its own, so the order changes no value.
// Reads go through L2 (__ldcg): other blocks wrote them.
__device__ void dispatch_body(const u32* ids, const u32* pos, u32* counts, u32 n_slots, u32 E,
                              u32 tile, u32 max_tiles, u32* sorted_slots, u32* slot_rows,
                              u32* sched) {
    __shared__ u32 s_off[ROUTER_MAX_E + 1];
    u32* offsets = sched + 1;
    u32* tile_expert = sched + 2 + E;
    u32* tile_row0 = tile_expert + max_tiles;
    if (threadIdx.x < 32) {
        const u32 lane = threadIdx.x;
        u32 rows_before = 0, tiles_before = 0;
        for (u32 base = 0; base < E; base += 32) {
            const u32 e = base + lane;
            const u32 c = e < E ? __ldcg(counts + e) : 0;
            const u32 nt = (c + tile - 1) / tile;
            // Inclusive warp scans of rows and tiles.
            u32 rc = c, tc = nt;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const u32 r2 = __shfl_up_sync(0xffffffffu, rc, o);
                const u32 t2 = __shfl_up_sync(0xffffffffu, tc, o);
                if (lane >= o) {
                    rc += r2;
                    tc += t2;
                }
            }
            if (e < E) {
                const u32 off = rows_before + rc - c;
                const u32 t0 = tiles_before + tc - nt;
                s_off[e] = off;
                offsets[e] = off;
                for (u32 i = 0; i < nt; ++i) {
                    tile_expert[t0 + i] = e;
                    tile_row0[t0 + i] = off + i * tile;
                }
                counts[e] = 0;
            }
            rows_before += __shfl_sync(0xffffffffu, rc, 31);
            tiles_before += __shfl_sync(0xffffffffu, tc, 31);
        }
        if (lane == 0) {
            s_off[E] = rows_before;
            offsets[E] = rows_before;
            sched[0] = tiles_before;
        }
    }
    __syncthreads();
    for (u32 s = threadIdx.x; s < n_slots; s += blockDim.x) {
        const u32 row = s_off[__ldcg(ids + s)] + __ldcg(pos + s);
        sorted_slots[row] = s;
        slot_rows[s] = row;
    }
}
