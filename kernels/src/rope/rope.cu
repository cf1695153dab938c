// Rotary embedding of every head of every row, in place: pair i is (i, i + half) (rotate-half
// form, as transformers) or, with `interleaved`, (2i, 2i + 1) (llama.cpp's GGUF llama layout).
// The angle is formed in f32 (position · inv_freq) and its cosine/sine taken in f64, like the CPU
// kernel, so both agree to the last bit of the angle.
extern "C" __global__ void rope_f32(float* x, const u32* positions, const float* inv_freq,
                                    u32 n_heads, u32 head_dim, u32 interleaved) {
    const u64 t = blockIdx.x;
    const u32 half = head_dim / 2;
    const float pos = (float)positions[t];
    float* row = x + t * (u64)n_heads * head_dim;
    for (u32 j = threadIdx.x; j < n_heads * half; j += blockDim.x) {
        const u32 h = j / half, i = j % half;
        const float angle = pos * inv_freq[i];
        const float c = (float)cos((double)angle), s = (float)sin((double)angle);
        float* v = row + h * head_dim;
        const u32 ia = interleaved ? 2 * i : i, ib = interleaved ? 2 * i + 1 : i + half;
        const float a = v[ia], b = v[ib];
        v[ia] = a * c - b * s;
        v[ib] = b * c + a * s;
    }
}

// The same rotation from a table of each row's cos/sin (`[n, head_dim / 2]` each), built once per
// forward by `rope_table` and shared by q, k and every layer.
extern "C" __global__ void rope_table(const u32* positions, const float* inv_freq, u32 half,
                                      float* cos_out, float* sin_out) {
    const u64 t = blockIdx.x;
    const float pos = (float)positions[t];
    for (u32 i = threadIdx.x; i < half; i += blockDim.x) {
        const float angle = pos * inv_freq[i];
        cos_out[t * half + i] = (float)cos((double)angle);
        sin_out[t * half + i] = (float)sin((double)angle);
    }
}

extern "C" __global__ void rope_apply(float* x, const float* cos_t, const float* sin_t,
                                      u32 n_heads, u32 head_dim, u32 interleaved) {
    const u64 t = blockIdx.x;
    const u32 half = head_dim / 2;
    float* row = x + t * (u64)n_heads * head_dim;
    for (u32 j = threadIdx.x; j < n_heads * half; j += blockDim.x) {
        const u32 h = j / half, i = j % half;
        const float c = cos_t[t * half + i], s = sin_t[t * half + i];
        float* v = row + h * head_dim;
        const u32 ia = interleaved ? 2 * i : i, ib = interleaved ? 2 * i + 1 : i + half;
        const float a = v[ia], b = v[ib];
        v[ia] = a * c - b * s;
        v[ib] = b * c + a * s;
    }
}

// rope_apply over two tensors of the same rows (q with nh_a heads, k with nh_b) in one launch:
// grid (n, 2), blockIdx.y picks the tensor.
extern "C" __global__ void rope_apply2(float* a, u32 nh_a, float* b, u32 nh_b, const float* cos_t,
                                       const float* sin_t, u32 head_dim, u32 interleaved) {
    const u64 t = blockIdx.x;
    const u32 half = head_dim / 2;
    const u32 n_heads = blockIdx.y == 0 ? nh_a : nh_b;
    float* row = (blockIdx.y == 0 ? a : b) + t * (u64)n_heads * head_dim;
    for (u32 j = threadIdx.x; j < n_heads * half; j += blockDim.x) {
        const u32 h = j / half, i = j % half;
        const float c = cos_t[t * half + i], s = sin_t[t * half + i];
        float* v = row + h * head_dim;
        const float x0 = v[i], x1 = v[i + half];
        v[i] = x0 * c - x1 * s;
        v[i + half] = x1 * c + x0 * s;
    }
}
