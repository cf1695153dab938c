// residual[t] += Σ_j expert_out[slot_rows[t·k + j]], the expert rows already scaled by their
// routing weight; the sum over j is formed first, in slot order, then added (as the CPU op).
// With split-K expert outputs, each row is the sum of `splits` partials `split_stride` apart.
extern "C" __global__ void combine_f32(const float* __restrict__ expert_out,
                                       const u32* __restrict__ slot_rows, float* residual,
                                       u32 hidden, u32 top_k, u32 splits, u64 split_stride) {
    const u64 t = blockIdx.x;
    for (u32 h = threadIdx.x; h < hidden; h += blockDim.x) {
        float acc = 0.f;
        for (u32 j = 0; j < top_k; ++j) {
            const float* e = expert_out + (u64)slot_rows[t * top_k + j] * hidden + h;
            float v = e[0];
            for (u32 z = 1; z < splits; ++z) v += e[z * split_stride];
            acc += v;
        }
        residual[t * hidden + h] += acc;
    }
}
