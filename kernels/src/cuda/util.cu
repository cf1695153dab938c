// Device-side helpers for tests and benchmarks: random fills (so multi-GB weight sets need no
// host generation or upload) and a streaming read for the bandwidth ceiling.

__device__ __forceinline__ u32 mix32(u64 x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return (u32)x;
}
// Uniform in [-scale, scale), a function of (seed, i) only.
__device__ __forceinline__ float uniform(u64 seed, u64 i, float scale) {
    return ((float)(mix32(seed * 0x9e3779b97f4a7c15ull + i) >> 8) * (1.0f / 8388608.0f) - 1.0f) * scale;
}

extern "C" __global__ void fill_uniform_f32(float* out, u64 n, u64 seed, float scale) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        out[i] = uniform(seed, i, scale);
}
extern "C" __global__ void fill_uniform_bf16(u16* out, u64 n, u64 seed, float scale) {
    bf16 tag;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        out[i] = to_half_bits(uniform(seed, i, scale), tag);
}
extern "C" __global__ void fill_uniform_f16(u16* out, u64 n, u64 seed, float scale) {
    f16 tag;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        out[i] = to_half_bits(uniform(seed, i, scale), tag);
}

// Reads n16 16-byte words and writes one value per block, so nothing is optimised away.
extern "C" __global__ void read_sum(const uint4* __restrict__ src, u64 n16, u32* __restrict__ out) {
    u32 acc = 0;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n16; i += (u64)gridDim.x * blockDim.x) {
        const uint4 v = __ldg(src + i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x12345678u) out[blockIdx.x] = acc;
}
