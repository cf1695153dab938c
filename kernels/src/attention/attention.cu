// Causal grouped-query attention of new rows against each sequence's KV cache.
//
// Each sequence's cache is one allocation `[n_layers][2][cap][kv_width]` f32 (keys, then values,
// per layer), so a row's metadata does not depend on the layer: the cache base, its capacity and
// the row's position (its query position; the row's own key sits at that position).
struct RowMeta {
    u64 kv_base;
    u32 cap;
    u32 pos;
};

// Writes the new rows' keys and values into their caches at their positions.
extern "C" __global__ void kv_append_f32(const float* __restrict__ k, const float* __restrict__ v,
                                         const RowMeta* __restrict__ meta, u32 layer, u32 kv_width) {
    const u64 r = blockIdx.x;
    const RowMeta m = meta[r];
    float* kc = (float*)m.kv_base + ((u64)(2 * layer) * m.cap + m.pos) * kv_width;
    float* vc = (float*)m.kv_base + ((u64)(2 * layer + 1) * m.cap + m.pos) * kv_width;
    for (u32 i = threadIdx.x; i < kv_width; i += blockDim.x) {
        kc[i] = k[r * kv_width + i];
        vc[i] = v[r * kv_width + i];
    }
}

// Launched with ATT_WARPS warps (cuda.rs): at decode a block's keys are split over its warps, so
// more warps shorten the serial online-softmax chain.
#define ATT_WARPS 8
#define ATT_MAX_D 256

// One block per (query head, row); its warps take every ATT_WARPS-th visible key with an online
// softmax each, then merge. head_dim ≤ 256.
extern "C" __global__ void __launch_bounds__(ATT_WARPS * 32)
attention_f32(const float* __restrict__ q, const RowMeta* __restrict__ meta, float* __restrict__ out,
              u32 layer, u32 n_heads, u32 n_kv_heads, u32 head_dim, float scale, u32 window) {
    constexpr int PER_LANE = ATT_MAX_D / 32;
    __shared__ float s_m[ATT_WARPS], s_l[ATT_WARPS];
    __shared__ float s_acc[ATT_WARPS][ATT_MAX_D];
    const u32 head = blockIdx.x;
    const u64 r = blockIdx.y;
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const RowMeta m = meta[r];
    const u32 kvw = n_kv_heads * head_dim;
    const u32 kvh = head / (n_heads / n_kv_heads);
    const float* qr = q + r * (u64)n_heads * head_dim + (u64)head * head_dim;
    const float* kc = (const float*)m.kv_base + (u64)(2 * layer) * m.cap * kvw + kvh * head_dim;
    const float* vc = (const float*)m.kv_base + (u64)(2 * layer + 1) * m.cap * kvw + kvh * head_dim;

    float qv[PER_LANE], acc[PER_LANE];
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
        const u32 d = lane + 32 * i;
        qv[i] = d < head_dim ? qr[d] : 0.f;
        acc[i] = 0.f;
    }
    const u32 first = (window > 0 && m.pos + 1 > window) ? m.pos + 1 - window : 0;
    float run_max = NEG_INF, run_sum = 0.f;
    for (u32 j = first + warp; j <= m.pos; j += ATT_WARPS) {
        const float* kj = kc + (u64)j * kvw;
        float s = 0.f;
#pragma unroll
        for (int i = 0; i < PER_LANE; ++i) {
            const u32 d = lane + 32 * i;
            if (d < head_dim) s += qv[i] * kj[d];
        }
        s = warp_sum(s) * scale;
        const float new_max = fmaxf(run_max, s);
        const float corr = expf(run_max - new_max);
        const float p = expf(s - new_max);
        run_sum = run_sum * corr + p;
        const float* vj = vc + (u64)j * kvw;
#pragma unroll
        for (int i = 0; i < PER_LANE; ++i) {
            const u32 d = lane + 32 * i;
            if (d < head_dim) acc[i] = acc[i] * corr + p * vj[d];
        }
        run_max = new_max;
    }
    if (lane == 0) {
        s_m[warp] = run_max;
        s_l[warp] = run_sum;
    }
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
        const u32 d = lane + 32 * i;
        if (d < head_dim) s_acc[warp][d] = acc[i];
    }
    __syncthreads();
    float gmax = NEG_INF;
    for (int w = 0; w < ATT_WARPS; ++w) gmax = fmaxf(gmax, s_m[w]);
    float total = 0.f, scale_w[ATT_WARPS];
    for (int w = 0; w < ATT_WARPS; ++w) {
        scale_w[w] = s_l[w] > 0.f ? expf(s_m[w] - gmax) : 0.f;
        total += s_l[w] * scale_w[w];
    }
    float* o = out + r * (u64)n_heads * head_dim + (u64)head * head_dim;
    for (u32 d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float v = 0.f;
        for (int w = 0; w < ATT_WARPS; ++w) v += s_acc[w][d] * scale_w[w];
        o[d] = v / total;
    }
}
