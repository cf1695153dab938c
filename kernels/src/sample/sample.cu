// Next-token sampling on the device, one block per row, following the host sampler
// (engine/src/sampling.rs): NaN logits count as -inf; penalties and logit bias arrive as one
// combined edit per token id; greedy takes the argmax (exact ties to the lowest id); otherwise
// weights exp((l - max) / T) (the best exactly 1) over the candidates — the top-k in canonical
// order (value descending, ties by ascending id), cut to the shortest canonical prefix holding
// top_p of the mass, weights below min_p zeroed — and the host-drawn uniform u picks the first
// candidate whose running sum exceeds u · sum. Candidates are walked in canonical order when
// top-k or top-p apply and in id order otherwise, as the host does. Sums are f64; only their
// association differs from the host's sequential sums.
//
// Also per row, for logprobs: the raw logits' max and Σ exp(l - max) (f64), the chosen token's
// raw logit, and the n_top largest raw logits (canonical order).

#define ST 512

struct SampleRow {
    float temperature;
    u32 top_k;
    float top_p;
    float min_p;
    double u;
    u32 edit_begin, edit_end;
    u32 n_top;
    u32 want_logprobs;
};
struct Edit {
    u32 id;
    float bias, rep, sub;
};
struct SampleOut {
    u32 token;
    float max;
    double z;
    float chosen;
    u32 n_top;
};

__device__ __forceinline__ float finite_or_neg_inf(float v) { return isnan(v) ? NEG_INF : v; }

// Ascending u32 order for descending values: -0.0 and 0.0 tie.
__device__ __forceinline__ u32 desc_key(float v) {
    const u32 b = __float_as_uint(v + 0.f);
    const u32 asc = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
    return ~asc;
}

__device__ double block_sum_f64(double v, double* s) {
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if (lane == 0) s[warp] = v;
    __syncthreads();
    double t = 0.0;
    for (u32 w = 0; w < ST / 32; ++w) t += s[w];
    return t;
}

// Exclusive prefix over threads of v (in thread order); every thread gets its own.
template <typename T>
__device__ T block_exclusive_scan(T v, T* s) {
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    T x = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const T y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= (u32)o) x += y;
    }
    __syncthreads();
    if (lane == 31) s[warp] = x;
    __syncthreads();
    T before = 0;
    for (u32 w = 0; w < warp; ++w) before += s[w];
    return before + x - v;
}

__device__ u32 block_min_u32(u32 v, u32* s) {
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    if (lane == 0) s[warp] = v;
    __syncthreads();
    u32 t = 0xffffffffu;
    for (u32 w = 0; w < ST / 32; ++w) t = min(t, s[w]);
    return t;
}

__device__ int block_max_i32(int v, int* s) {
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    if (lane == 0) s[warp] = v;
    __syncthreads();
    int t = -1;
    for (u32 w = 0; w < ST / 32; ++w) t = max(t, s[w]);
    return t;
}

// The best (value, id) in canonical order among elements ranked strictly after (pv, pid).
__device__ void block_best(float& bv, u32& bi, float* sv, u32* si) {
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        const u32 oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > bv || (ov == bv && oi < bi)) {
            bv = ov;
            bi = oi;
        }
    }
    __syncthreads();
    if (lane == 0) {
        sv[warp] = bv;
        si[warp] = bi;
    }
    __syncthreads();
    bv = sv[0];
    bi = si[0];
    for (u32 w = 1; w < ST / 32; ++w)
        if (sv[w] > bv || (sv[w] == bv && si[w] < bi)) {
            bv = sv[w];
            bi = si[w];
        }
}

extern "C" __global__ void __launch_bounds__(ST)
sample_rows_f32(const float* __restrict__ logits, u32 V, const SampleRow* __restrict__ rows,
                const Edit* __restrict__ edits, float* __restrict__ adj_all,
                unsigned long long* __restrict__ items_all, SampleOut* __restrict__ out,
                u32* __restrict__ top_ids, float* __restrict__ top_vals, u32 max_top) {
    __shared__ u32 offs[16 * ST];
    __shared__ double s_d[32];
    __shared__ float s_f[32];
    __shared__ u32 s_u[32];
    __shared__ int s_i[32];
    const u32 row = blockIdx.x, tid = threadIdx.x;
    const SampleRow p = rows[row];
    const float* lg = logits + (u64)row * V;
    float* adj = adj_all + (u64)row * V;

    for (u32 i = tid; i < V; i += ST) adj[i] = finite_or_neg_inf(lg[i]);
    __syncthreads();
    for (u32 e = p.edit_begin + tid; e < p.edit_end; e += ST) {
        const Edit ed = edits[e];
        if (ed.id < V) {
            float v = adj[ed.id] + ed.bias;
            v = v > 0.f ? v / ed.rep : v * ed.rep;
            adj[ed.id] = v - ed.sub;
        }
    }
    __syncthreads();

    float bv = NEG_INF;
    u32 bi = 0xffffffffu;
    for (u32 i = tid; i < V; i += ST) {
        const float v = adj[i];
        if (v > bv) {
            bv = v;
            bi = i;
        }
    }
    block_best(bv, bi, s_f, s_u);
    const float mx = bv;
    u32 token;
    if (p.temperature == 0.f || p.top_k == 1 || mx == NEG_INF) {
        // Greedy, or every candidate masked (the host then takes the lowest id).
        token = mx == NEG_INF ? 0 : bi;
    } else {
        const float inv_t = 1.f / p.temperature;
        const bool by_top_k = p.top_k > 0 && p.top_k < V;
        const bool sorted = by_top_k || p.top_p < 1.f;
        unsigned long long* items = items_all + (u64)row * 2 * V;
        if (sorted) {
            for (u32 i = tid; i < V; i += ST) items[i] = ((unsigned long long)desc_key(adj[i]) << 32) | i;
            __syncthreads();
            // Stable LSD radix sort on the key (upper 32 bits), 4 bits a pass; the ids start in
            // ascending order, so equal keys stay by ascending id. Eight passes end in `items`.
            const u32 C = (V + ST - 1) / ST, b0 = min(V, tid * C), b1 = min(V, b0 + C);
            unsigned long long *src = items, *dst = items + V;
            for (u32 pass = 0; pass < 8; ++pass) {
                const u32 shift = 32 + 4 * pass;
                u32 cnt[16];
#pragma unroll
                for (int b = 0; b < 16; ++b) cnt[b] = 0;
                for (u32 i = b0; i < b1; ++i) {
                    const u32 d = (u32)(src[i] >> shift) & 15u;
#pragma unroll
                    for (int b = 0; b < 16; ++b) cnt[b] += d == (u32)b;
                }
#pragma unroll
                for (int b = 0; b < 16; ++b) offs[b * ST + tid] = cnt[b];
                __syncthreads();
                u32 mine[16], total = 0;
#pragma unroll
                for (int j = 0; j < 16; ++j) {
                    mine[j] = offs[tid * 16 + j];
                    total += mine[j];
                }
                u32 run = block_exclusive_scan<u32>(total, s_u);
#pragma unroll
                for (int j = 0; j < 16; ++j) {
                    offs[tid * 16 + j] = run;
                    run += mine[j];
                }
                __syncthreads();
                for (u32 i = b0; i < b1; ++i) {
                    const unsigned long long it = src[i];
                    const u32 d = (u32)(it >> shift) & 15u;
                    dst[offs[d * ST + tid]++] = it;
                }
                __syncthreads();
                unsigned long long* t = src;
                src = dst;
                dst = t;
            }
        }
        const u32 n = by_top_k ? p.top_k : V;
        // Candidate i (canonical position when sorted, else the id itself) and its weight.
#define CAND_ID(i) (sorted ? (u32)(items[i] & 0xffffffffu) : (i))
#define WEIGHT(v) ((v) == mx ? 1.f : expf(((v) - mx) * inv_t))
        const u32 C = (n + ST - 1) / ST, c0 = min(n, tid * C), c1 = min(n, c0 + C);
        u32 keep = n;
        if (p.top_p < 1.f) {
            double part = 0.0;
            for (u32 i = c0; i < c1; ++i) part += (double)WEIGHT(adj[CAND_ID(i)]);
            const double total = block_sum_f64(part, s_d);
            const double target = (double)p.top_p * total;
            double acc = block_exclusive_scan<double>(part, s_d);
            u32 first = 0xffffffffu;
            for (u32 i = c0; i < c1; ++i) {
                acc += (double)WEIGHT(adj[CAND_ID(i)]);
                if (acc >= target) {
                    first = i;
                    break;
                }
            }
            first = block_min_u32(first, s_u);
            if (first != 0xffffffffu) keep = first + 1;
        }
        const u32 k0 = min(keep, c0), k1 = min(keep, c1);
        double part = 0.0;
        for (u32 i = k0; i < k1; ++i) {
            const float w = WEIGHT(adj[CAND_ID(i)]);
            if (!(w < p.min_p)) part += (double)w;
        }
        const double sum = block_sum_f64(part, s_d);
        const double target = p.u * sum;
        double acc = block_exclusive_scan<double>(part, s_d);
        u32 first = 0xffffffffu;
        int last_pos = -1;
        for (u32 i = k0; i < k1; ++i) {
            float w = WEIGHT(adj[CAND_ID(i)]);
            if (w < p.min_p) w = 0.f;
            if (w > 0.f) {
                last_pos = (int)i;
                acc += (double)w;
                if (acc > target && first == 0xffffffffu) first = i;
            }
        }
        first = block_min_u32(first, s_u);
        last_pos = block_max_i32(last_pos, s_i);
        const u32 pick = first != 0xffffffffu ? first : (last_pos >= 0 ? (u32)last_pos : 0u);
        token = CAND_ID(pick);
#undef CAND_ID
#undef WEIGHT
    }

    SampleOut o;
    o.token = token;
    o.max = NEG_INF;
    o.z = 0.0;
    o.chosen = lg[token];
    o.n_top = 0;
    if (p.want_logprobs) {
        float m = NEG_INF;
        for (u32 i = tid; i < V; i += ST) m = fmaxf(m, lg[i]);
        u32 mi = 0;
        block_best(m, mi, s_f, s_u);
        double z = 0.0;
        for (u32 i = tid; i < V; i += ST) z += exp((double)lg[i] - (double)m);
        o.max = m;
        o.z = block_sum_f64(z, s_d);
        const u32 nt = min(p.n_top, min(max_top, V));
        float pv = __int_as_float(0x7f800000);
        u32 pid = 0xffffffffu;
        for (u32 j = 0; j < nt; ++j) {
            float cv = NEG_INF;
            u32 ci = 0xffffffffu;
            for (u32 i = tid; i < V; i += ST) {
                const float v = finite_or_neg_inf(lg[i]);
                const bool after = v < pv || (v == pv && (pid == 0xffffffffu || i > pid));
                if (after && (v > cv || (v == cv && i < ci))) {
                    cv = v;
                    ci = i;
                }
            }
            block_best(cv, ci, s_f, s_u);
            if (ci == 0xffffffffu) break;
            if (tid == 0) {
                top_ids[(u64)row * max_top + j] = ci;
                top_vals[(u64)row * max_top + j] = lg[ci];
            }
            pv = cv;
            pid = ci;
            o.n_top = j + 1;
        }
    }
    if (tid == 0) out[row] = o;
}
