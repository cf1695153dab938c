// RMSNorm of each row (one block per row), optionally after adding `y` into the residual `x`
// in place: the attention block's residual add fused with the MoE block's input norm.
template <typename W, bool ADD>
__device__ void rms_impl(float* __restrict__ x, const float* __restrict__ y,
                         const W* __restrict__ w, float* __restrict__ out, u32 h, float eps) {
    __shared__ float scratch[32];
    const u64 r = blockIdx.x;
    float* xr = x + r * h;
    float ss = 0.f;
    for (u32 i = threadIdx.x; i < h; i += blockDim.x) {
        float v = xr[i];
        if (ADD) {
            v += y[r * h + i];
            xr[i] = v;
        }
        ss += v * v;
    }
    ss = block_sum(ss, scratch);
    const float inv = 1.0f / sqrtf(ss / (float)h + eps);
    for (u32 i = threadIdx.x; i < h; i += blockDim.x) out[r * h + i] = to_f32(w[i]) * (xr[i] * inv);
}

#define RMS(S, W)                                                                            \
    extern "C" __global__ void rms_norm_##S(const float* x, const W* w, float* out, u32 h,   \
                                            float eps) {                                     \
        rms_impl<W, false>(const_cast<float*>(x), nullptr, w, out, h, eps);                  \
    }                                                                                        \
    extern "C" __global__ void add_rms_norm_##S(float* x, const float* y, const W* w,        \
                                                float* out, u32 h, float eps) {              \
        rms_impl<W, true>(x, y, w, out, h, eps);                                             \
    }
FOR_EACH_WEIGHT(RMS)

// x += y, elementwise.
extern "C" __global__ void add_f32(float* x, const float* y, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        x[i] += y[i];
}

// out[i] = x[rows[i]] for rows of `cols` floats.
extern "C" __global__ void gather_rows_f32(const float* x, const u32* rows, float* out, u32 cols) {
    const u64 i = blockIdx.x;
    const float* src = x + (u64)rows[i] * cols;
    for (u32 c = threadIdx.x; c < cols; c += blockDim.x) out[i * cols + c] = src[c];
}

// out[r] = the index of row r's largest value (`cols` floats); exact ties go to the lowest index
// and NaN never wins (a row with no value above -inf gives 0), as the host sampler's argmax.
extern "C" __global__ void argmax_rows_f32(const float* __restrict__ x, u32 cols, u32* out) {
    __shared__ float s_v[32];
    __shared__ u32 s_i[32];
    const float* row = x + (u64)blockIdx.x * cols;
    float bv = NEG_INF;
    u32 bi = 0xffffffffu;
    for (u32 c = threadIdx.x; c < cols; c += blockDim.x) {
        const float v = row[c];
        if (v > bv) {
            bv = v;
            bi = c;
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        const u32 oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > bv || (ov == bv && oi < bi)) {
            bv = ov;
            bi = oi;
        }
    }
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        s_v[warp] = bv;
        s_i[warp] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (u32 w = 1; w < blockDim.x / 32; ++w)
            if (s_v[w] > bv || (s_v[w] == bv && s_i[w] < bi)) {
                bv = s_v[w];
                bi = s_i[w];
            }
        out[blockIdx.x] = bi == 0xffffffffu ? 0 : bi;
    }
}
