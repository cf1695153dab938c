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

// Decode-sized batches: split K across the 8 warps of a block (each a contiguous K slice, weights
// prefetched PREFETCH slices ahead), then sum the warps' partial tiles in shared memory. A block
// covers 16 output features and 8·NT tokens, so even a narrow projection (k/v: 1024 features)
// keeps 64 blocks × 8 warps streaming. grid: (token tiles, N / 16).
#define LIN_WARPS 8
#define LIN_PREFETCH 4
template <typename W, int NT>
__device__ void linear_splitk_impl(const float* __restrict__ x, const W* __restrict__ w,
                                   float* __restrict__ out, u32 T, u32 N, u32 K) {
    __shared__ float red[LIN_WARPS][NT][4][32];
    const u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    const u32 n0 = blockIdx.y * 16;
    const u32 t0 = blockIdx.x * 8 * NT;
    const u32 chunk = ((K / LIN_WARPS + 31) / 32) * 32;
    const u32 k_begin = min(K, warp * chunk), k_end = min(K, k_begin + chunk);
    const W* wb = w + (u64)n0 * K + 8 * q;
    float c[NT][4];
#pragma unroll
    for (int j = 0; j < NT; ++j) c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.f;
    const float* xb[NT];
#pragma unroll
    for (int j = 0; j < NT; ++j) {
        const u32 t = t0 + j * 8 + g;
        xb[j] = t < T ? x + (u64)t * K + 8 * q : nullptr;
    }
    AFrag pa[LIN_PREFETCH];
#pragma unroll
    for (int p = 0; p < LIN_PREFETCH; ++p) {
        const u32 k = k_begin + 32 * p;
        if (k < k_end) pa[p] = load_a(wb, K, g, k);
    }
    for (u32 k0 = k_begin; k0 < k_end; k0 += 32 * LIN_PREFETCH) {
#pragma unroll
        for (int p = 0; p < LIN_PREFETCH; ++p) {
            const u32 k = k0 + 32 * p;
            if (k < k_end) {
                const AFrag a = pa[p];
                if (k + 32 * LIN_PREFETCH < k_end) pa[p] = load_a(wb, K, g, k + 32 * LIN_PREFETCH);
#pragma unroll
                for (int j = 0; j < NT; ++j) {
                    const uint4 b = xb[j] ? load_b_f32<W>(xb[j] + k) : make_uint4(0, 0, 0, 0);
                    mma_k32<W>(c[j], a, b);
                }
            }
        }
    }
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) red[warp][j][i][lane] = c[j][i];
    __syncthreads();
    // Warp j' < NT sums n-tile j' over the warps and stores it.
    if (warp < NT) {
        const int j = warp;
        float v[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            v[i] = 0.f;
            for (int w2 = 0; w2 < LIN_WARPS; ++w2) v[i] += red[w2][j][i][lane];
        }
        const u32 ta = t0 + j * 8 + 2 * q, tb = ta + 1;
        if (ta < T) {
            out[(u64)ta * N + n0 + g] = v[0];
            out[(u64)ta * N + n0 + g + 8] = v[2];
        }
        if (tb < T) {
            out[(u64)tb * N + n0 + g] = v[1];
            out[(u64)tb * N + n0 + g + 8] = v[3];
        }
    }
}

// f32 → the weight dtype, 8 values per thread (n8 groups), for cuBLAS inputs.
template <typename W>
__device__ void to_half_impl(const float* __restrict__ x, W* __restrict__ out, u64 n8) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n8; i += (u64)gridDim.x * blockDim.x)
        reinterpret_cast<uint4*>(out)[i] = load_b_f32<W>(x + 8 * i);
}

#define LINEAR_SPLITK(S, W)                                                                  \
    extern "C" __global__ void __launch_bounds__(256)                                        \
        linear_splitk_##S##_nt1(const float* x, const W* w, float* out, u32 T, u32 N, u32 K) { \
        linear_splitk_impl<W, 1>(x, w, out, T, N, K);                                        \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(256)                                        \
        linear_splitk_##S##_nt2(const float* x, const W* w, float* out, u32 T, u32 N, u32 K) { \
        linear_splitk_impl<W, 2>(x, w, out, T, N, K);                                        \
    }                                                                                        \
    extern "C" __global__ void to_half_##S(const float* x, W* out, u64 n8) {                 \
        to_half_impl<W>(x, out, n8);                                                         \
    }
FOR_EACH_HALF(LINEAR_SPLITK)

// Decode-sized batches (at most 8 tokens) of up to three weights sharing the input (q, k, v): a
// warp per FPW consecutive output features of one weight, each lane streaming 16-byte pieces (a
// warp reads 512 contiguous bytes of a row per step), every token dotted in f32. Features of the
// weights are numbered one after another; a warp's FPW features never straddle two weights
// (each N is a multiple of FPW). grid: ceil((N0 + N1 + N2) / (warps · FPW)).
struct LinOut {
    const void* w;
    float* out;
    u32 n;
};
template <typename W, int FPW, int NR>
__device__ void linear_gemv_impl(const float* __restrict__ x, u32 T, u32 K, LinOut a, LinOut b,
                                 LinOut c) {
    const u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    u32 n0 = (blockIdx.x * (blockDim.x >> 5) + warp) * FPW;
    LinOut m = a;
    if (n0 >= a.n) {
        n0 -= a.n;
        m = b;
        if (n0 >= b.n) {
            n0 -= b.n;
            m = c;
            if (n0 >= c.n) return;
        }
    }
    const u32 nt = min((u32)NR, T);
    const W* rows[FPW];
#pragma unroll
    for (int i = 0; i < FPW; ++i) rows[i] = reinterpret_cast<const W*>(m.w) + (u64)(n0 + i) * K;
    const float* xs[NR];
#pragma unroll
    for (int j = 0; j < NR; ++j) xs[j] = x + (u64)j * K;
    float acc[FPW][NR];
    gemv_lane<W, float, FPW, NR>(rows, xs, nt, K, acc);
#pragma unroll
    for (int j = 0; j < NR; ++j) {
        if (j < nt) {
#pragma unroll
            for (int i = 0; i < FPW; ++i) {
                const float v = warp_sum(acc[i][j]);
                if (lane == 0) m.out[(u64)j * m.n + n0 + i] = v;
            }
        }
    }
}

#define LINEAR_GEMV_FPW(S, W, FPW, NR)                                                       \
    extern "C" __global__ void linear_gemv_##S##_f##FPW##_r##NR(                             \
        const float* x, u32 T, u32 K, LinOut a, LinOut b, LinOut c) {                        \
        linear_gemv_impl<W, FPW, NR>(x, T, K, a, b, c);                                      \
    }
#define LINEAR_GEMV_NR(S, W, FPW)                                                            \
    LINEAR_GEMV_FPW(S, W, FPW, 1) LINEAR_GEMV_FPW(S, W, FPW, 2)                              \
    LINEAR_GEMV_FPW(S, W, FPW, 4) LINEAR_GEMV_FPW(S, W, FPW, 8)
#define LINEAR_GEMV(S, W) LINEAR_GEMV_NR(S, W, 1) LINEAR_GEMV_NR(S, W, 2) LINEAR_GEMV_NR(S, W, 4)
FOR_EACH_HALF(LINEAR_GEMV)
