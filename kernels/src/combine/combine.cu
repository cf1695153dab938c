// residual[t] += Σ_j expert_out[slot_rows[t·k + j]] (× route_w[t·k + j] when given; the fused
// kernels apply it in their epilogue), the sum over j formed first, in slot order, then added
// (as the CPU op). With split-K expert outputs, each row is the sum of `splits` partials
// `split_stride` apart. grid: (tokens, ceil(hidden / blockDim)).
extern "C" __global__ void combine_f32(const float* __restrict__ expert_out,
                                       const u32* __restrict__ slot_rows,
                                       const float* __restrict__ route_w, float* residual,
                                       u32 hidden, u32 top_k, u32 splits, u64 split_stride) {
    const u64 t = blockIdx.x;
    const u32 h = blockIdx.y * blockDim.x + threadIdx.x;
    if (h >= hidden) return;
    float acc = 0.f;
    for (u32 j = 0; j < top_k; ++j) {
        const float* e = expert_out + (u64)slot_rows[t * top_k + j] * hidden + h;
        float v = e[0];
        for (u32 z = 1; z < splits; ++z) v += e[z * split_stride];
        acc += route_w ? route_w[t * top_k + j] * v : v;
    }
    residual[t * hidden + h] += acc;
}
