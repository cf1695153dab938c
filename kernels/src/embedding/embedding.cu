// out[t] = table[ids[t]] widened to f32. One block per token.
template <typename W>
__device__ void embed_impl(const W* __restrict__ table, const u32* __restrict__ ids,
                           float* __restrict__ out, u32 hidden) {
    const u64 t = blockIdx.x;
    const W* row = table + (u64)ids[t] * hidden;
    float* o = out + t * hidden;
    for (u32 i = threadIdx.x; i < hidden; i += blockDim.x) o[i] = to_f32(row[i]);
}

#define EMBED(S, W)                                                                          \
    extern "C" __global__ void embed_##S(const W* table, const u32* ids, float* out,         \
                                         u32 hidden) {                                       \
        embed_impl<W>(table, ids, out, hidden);                                              \
    }
FOR_EACH_WEIGHT(EMBED)
