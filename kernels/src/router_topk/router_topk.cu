// The router of one MoE layer in one launch per token block: gate logits (x · gateᵀ), softmax,
// top-k (ties to the lower id), renormalisation, the load-balance counters (accumulated on the
// device, read only when asked) and each slot's place in its expert's group (the counts feed the
// dispatch kernel below).
//
// Counters per layer, in one buffer: tokens (u64), expert_tokens[E] (u64), coselect[E·E] (u64),
// prob_mass[E] (f64), entropy (f64).

#define ROUTER_MAX_E 256
#define ROUTER_MAX_K 16
#define TILE_ROWS 64

__device__ void dispatch_body(const u32* ids, const u32* pos, u32* counts, u32 n_slots, u32 E,
                              u32 tile, u32 max_tiles, u32* sorted_slots, u32* slot_rows,
                              u32* sched);

template <typename W>
__device__ void router_impl(const float* __restrict__ x, const W* __restrict__ gate, u32 H, u32 E,
                            u32 K, float* __restrict__ logits_out, u32* __restrict__ ids,
                            float* __restrict__ weights, u32* __restrict__ counts,
                            u32* __restrict__ pos, u64* __restrict__ stats,
                            u32* __restrict__ done, u32 max_tiles, u32* __restrict__ sorted_slots,
                            u32* __restrict__ slot_rows, u32* __restrict__ sched) {
    __shared__ float s_logit[ROUTER_MAX_E];
    __shared__ float s_prob[ROUTER_MAX_E];
    __shared__ u32 s_pick[ROUTER_MAX_K];
    const u64 t = blockIdx.x;
    const u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    const float* xr = x + t * H;
    for (u32 e = warp; e < E; e += nw) {
        const W* gr = gate + (u64)e * H;
        float s = 0.f;
        for (u32 k = lane; k < H; k += 32) s += xr[k] * to_f32(gr[k]);
        s = warp_sum(s);
        if (lane == 0) s_logit[e] = s;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float m = NEG_INF;
        for (u32 e = 0; e < E; ++e) m = fmaxf(m, s_logit[e]);
        float z = 0.f;
        for (u32 e = 0; e < E; ++e) {
            s_prob[e] = expf(s_logit[e] - m);
            z += s_prob[e];
        }
        double entropy = 0.0;
        for (u32 e = 0; e < E; ++e) {
            const float p = s_prob[e] / z;
            s_prob[e] = p;
            if (p > 0.f) entropy -= (double)p * log((double)p);
        }
        float top_sum = 0.f;
        u32 taken[ROUTER_MAX_E / 32];
        for (u32 i = 0; i < (E + 31) / 32; ++i) taken[i] = 0;
        for (u32 j = 0; j < K; ++j) {
            u32 best = 0xffffffffu;
            for (u32 e = 0; e < E; ++e) {
                if (taken[e >> 5] & (1u << (e & 31))) continue;
                if (best == 0xffffffffu || s_prob[e] > s_prob[best]) best = e;
            }
            taken[best >> 5] |= 1u << (best & 31);
            s_pick[j] = best;
            top_sum += s_prob[best];
        }
        u64* tokens = stats;
        u64* expert_tokens = stats + 1;
        u64* coselect = expert_tokens + E;
        double* entropy_sum = (double*)(coselect + (u64)E * E + E);
        atomicAdd(tokens, 1ull);
        atomicAdd(entropy_sum, entropy);
        for (u32 j = 0; j < K; ++j) {
            const u32 e = s_pick[j];
            ids[t * K + j] = e;
            weights[t * K + j] = s_prob[e] / top_sum;
            pos[t * K + j] = atomicAdd(&counts[e], 1u);
            atomicAdd(&expert_tokens[e], 1ull);
            for (u32 i = 0; i < K; ++i)
                if (i != j) atomicAdd(&coselect[(u64)e * E + s_pick[i]], 1ull);
        }
    }
    __syncthreads();
    double* prob_mass = (double*)(stats + 1 + E + (u64)E * E);
    for (u32 e = threadIdx.x; e < E; e += blockDim.x) {
        atomicAdd(&prob_mass[e], (double)s_prob[e]);
        if (logits_out) logits_out[t * E + e] = s_logit[e];
    }
    // The last block to finish groups every slot by expert (dispatch), saving a launch.
    __shared__ bool s_last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) s_last = atomicAdd(done, 1u) == gridDim.x - 1;
    __syncthreads();
    if (s_last) {
        __threadfence();
        dispatch_body(ids, pos, counts, gridDim.x * K, E, TILE_ROWS, max_tiles, sorted_slots,
                      slot_rows, sched);
        if (threadIdx.x == 0) *done = 0;
    }
}

#define ROUTER(S, W)                                                                         \
    extern "C" __global__ void router_topk_##S(                                              \
        const float* x, const W* gate, u32 H, u32 E, u32 K, float* logits_out, u32* ids,     \
        float* weights, u32* counts, u32* pos, u64* stats, u32* done, u32 max_tiles,         \
        u32* sorted_slots, u32* slot_rows, u32* sched) {                                     \
        router_impl<W>(x, gate, H, E, K, logits_out, ids, weights, counts, pos, stats, done, \
                       max_tiles, sorted_slots, slot_rows, sched);                           \
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
    if (threadIdx.x == 0) {
        u32 acc = 0, nt = 0;
        for (u32 e = 0; e < E; ++e) {
            const u32 c = __ldcg(counts + e);
            s_off[e] = acc;
            offsets[e] = acc;
            for (u32 r = 0; r < c; r += tile) {
                tile_expert[nt] = e;
                tile_row0[nt] = acc + r;
                ++nt;
            }
            acc += c;
            counts[e] = 0;
        }
        s_off[E] = acc;
        offsets[E] = acc;
        sched[0] = nt;
    }
    __syncthreads();
    for (u32 s = threadIdx.x; s < n_slots; s += blockDim.x) {
        const u32 row = s_off[__ldcg(ids + s)] + __ldcg(pos + s);
        sorted_slots[row] = s;
        slot_rows[s] = row;
    }
}
