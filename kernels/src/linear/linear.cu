// out[t][n] = Σ_k x[t][k] · w[n][k]: activations f32 [T, K], weights [N, K] in checkpoint dtype.

// SIMT, any dtype and shape: one warp per output feature and 8 tokens; lanes stride over k.
template <typename W>
__device__ void linear_simt_impl(const float* __restrict__ x, const W* __restrict__ w,
                                 float* __restrict__ out, u32 T, u32 N, u32 K) {
    const u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const u32 n = blockIdx.y * (blockDim.x >> 5) + warp;
    const u32 t0 = blockIdx.x * 8;
    if (n >= N) return;
    const u32 nt = min(8u, T - t0);
    float acc[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[j] = 0.f;
    const W* wr = w + (u64)n * K;
    for (u32 k = lane; k < K; k += 32) {
        const float wv = to_f32(wr[k]);
#pragma unroll
        for (int j = 0; j < 8; ++j)
            if (j < nt) acc[j] += wv * x[(u64)(t0 + j) * K + k];
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const float v = warp_sum(acc[j]);
        if (lane == 0 && j < nt) out[(u64)(t0 + j) * N + n] = v;
    }
}

#define LINEAR_SIMT(S, W)                                                                    \
    extern "C" __global__ void linear_simt_##S(const float* x, const W* w, float* out, u32 T, \
                                               u32 N, u32 K) {                               \
        linear_simt_impl<W>(x, w, out, T, N, K);                                             \
    }
FOR_EACH_WEIGHT(LINEAR_SIMT)

// Tensor cores (16-bit weights; N % 16 == 0, K % 32 == 0): a block is 4 warps × 16 features
// and up to 64 tokens (8 n-tiles); activations are rounded to the weight dtype as they load.
// grid: (token tiles of 64, feature blocks of 64).
template <typename W>
__device__ void linear_tc_impl(const float* __restrict__ x, const W* __restrict__ w,
                               float* __restrict__ out, u32 T, u32 N, u32 K) {
    const u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    const u32 n0 = blockIdx.y * 64 + warp * 16;
    const u32 t0 = blockIdx.x * 64;
    if (n0 >= N) return;
    const u32 tiles = min(8u, (T - t0 + 7) / 8);
    float c[8][4];
#pragma unroll
    for (int j = 0; j < 8; ++j) c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.f;
    const W* wb = w + (u64)n0 * K;
#pragma unroll 2
    for (u32 k = 0; k < K; k += 32) {
        const AFrag a = load_a(wb, K, g, k + 8 * q);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            if (j < tiles) {
                const u32 t = t0 + j * 8 + g;
                const uint4 b = t < T ? load_b_f32<W>(x + (u64)t * K + k + 8 * q) : make_uint4(0, 0, 0, 0);
                mma_k32<W>(c[j], a, b);
            }
        }
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        if (j < tiles) {
            const u32 ta = t0 + j * 8 + 2 * q, tb = ta + 1;
            if (ta < T) {
                out[(u64)ta * N + n0 + g] = c[j][0];
                out[(u64)ta * N + n0 + g + 8] = c[j][2];
            }
            if (tb < T) {
                out[(u64)tb * N + n0 + g] = c[j][1];
                out[(u64)tb * N + n0 + g + 8] = c[j][3];
            }
        }
    }
}

#define LINEAR_TC(S, W)                                                                      \
    extern "C" __global__ void __launch_bounds__(128)                                        \
        linear_tc_##S(const float* x, const W* w, float* out, u32 T, u32 N, u32 K) {         \
        linear_tc_impl<W>(x, w, out, T, N, K);                                               \
    }
FOR_EACH_HALF(LINEAR_TC)
