// Taskpath CUDA kernels: every op of the reference model, compiled with NVRTC
// at first use. Pointers arrive as raw device addresses; weight layouts are
// the packed formats of docs/KERNELS.md.
//
// Numerics follow the CPU path: compiled with --fmad=false (the CPU never
// fuses a multiply and an add), the quantised formats quantise activations
// exactly as taskpath-cpu's prepare_i8 / prepare_lut do and accumulate in
// integers, so i8row and the LUT formats match the CPU bit for bit up to the
// order of the f32 epilogue, which is kept. Only the float dot products
// (f32, f16) sum in another order (a warp tree instead of eight lanes).

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define FULL_MASK 0xffffffffu
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ int warp_isum(int v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ u32 warp_umax(u32 v) {
    for (int o = 16; o > 0; o >>= 1) {
        u32 w = __shfl_xor_sync(FULL_MASK, v, o);
        v = w > v ? w : v;
    }
    return v;
}

// Exact IEEE binary16 -> binary32 (the PTX conversion, no header needed).
__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("{ .reg .b16 t; mov.b16 t, %1; cvt.f32.f16 %0, t; }" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ float ld_f16(const u8* p) {
    return h2f((u16)p[0] | ((u16)p[1] << 8));
}

__device__ __forceinline__ float ld_f32(const u8* p) {
    return __int_as_float((int)((u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24)));
}

// taskpath-cpu's rne_i32: round to nearest even through the 1.5 * 2^23 trick.
__device__ __forceinline__ int rne_i32(float v) {
    return __float_as_int(__fadd_rn(v, 12582912.0f)) - 0x4B400000;
}

// ---------------------------------------------------------------- dense f32

// y[r, o] = w[o, :] . x[r, :] + b[o]; one warp per (r, o).
extern "C" __global__ void tp_linear_f32(const float* w, const float* x, const float* b,
                                         float* y, int rows, int n_out, int n_in) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (warp >= rows * n_out) return;
    int r = warp / n_out, o = warp % n_out;
    const float* wo = w + (u64)o * n_in;
    const float* xr = x + (u64)r * n_in;
    float s = 0.0f;
    for (int c = lane; c < n_in; c += 32) s += wo[c] * xr[c];
    s = warp_sum(s);
    if (lane == 0) y[(u64)r * n_out + o] = s + (b ? b[o] : 0.0f);
}

// f16: tiles of 8 rows, the f16 of row 8t+i, column c at byte 2 (8c + i) of tile t.
extern "C" __global__ void tp_linear_f16(const u8* w, const float* x, const float* b,
                                         float* y, int rows, int n_out, int n_in) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (warp >= rows * n_out) return;
    int r = warp / n_out, o = warp % n_out;
    const u8* tile = w + (u64)(o / 8) * 16 * n_in;
    int i = o % 8;
    const float* xr = x + (u64)r * n_in;
    float s = 0.0f;
    for (int c = lane; c < n_in; c += 32) s += ld_f16(tile + 2 * (8 * c + i)) * xr[c];
    s = warp_sum(s);
    if (lane == 0) y[(u64)r * n_out + o] = s + (b ? b[o] : 0.0f);
}

// ---------------------------------------------------------------- i8row

// prepare_i8: per 32 columns m = max |x| (on the bit patterns), xq = rne(x 127 / m),
// sx = m / 127. One warp per block; xq holds k = padded cols bytes, sx one f32 per block.
extern "C" __global__ void tp_prep_i8(const float* x, int cols, int nb, i8* xq, float* sx) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (warp >= nb) return;
    int c = warp * 32 + lane;
    float v = c < cols ? x[c] : 0.0f;
    u32 mbits = warp_umax(__float_as_uint(v) & 0x7FFFFFFFu);
    float m = __uint_as_float(mbits);
    i8 q = 0;
    float scale;
    if (mbits >= 0x7F800000u) {
        scale = __int_as_float(0x7FC00000);
    } else if (mbits == 0) {
        scale = 0.0f;
    } else {
        float inv = __fdiv_rn(127.0f, m);
        if (c < cols) q = (i8)rne_i32(__fmul_rn(v, inv));
        scale = __fdiv_rn(m, 127.0f);
    }
    xq[c] = q;
    if (lane == 0) sx[warp] = scale;
}

// Tiles of 8 rows: f32 scale[8], then row i's int8 for column c at 32 + i k + c.
// y = (sum over blocks, in order, of acc * sx) * scale + b. One warp per row.
extern "C" __global__ void tp_linear_i8(const u8* w, const i8* xq, const float* sx,
                                        const float* b, float* y, int n_out, int k) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (warp >= n_out) return;
    int o = warp, i = o % 8;
    const u8* tile = w + (u64)(o / 8) * (32 + 8 * (u64)k);
    const i8* wr = (const i8*)(tile + 32 + (u64)i * k);
    float ya = 0.0f;
    for (int blk = 0; blk < k / 32; blk++) {
        int acc = warp_isum((int)wr[blk * 32 + lane] * (int)xq[blk * 32 + lane]);
        ya = ya + (float)acc * sx[blk];
    }
    if (lane == 0) {
        float v = ya * ld_f32(tile + 4 * i);
        y[o] = b ? v + b[o] : v;
    }
}

// ---------------------------------------------------------------- LUT (int4 / int2)

// prepare_lut: per group of g columns, 16-entry int8 tables per 4 columns
// (T[i] = ((x0 s0 + x1 s1) + x2 s2) - x3 for i < 8, T[15 - i] = -T[i]),
// quantised with m = max ((|x0| + |x1|) + |x2|) + |x3|; hts = (m / 127) / 2,
// xs = sum -T[0] (zero-point formats). One thread per group.
extern "C" __global__ void tp_prep_lut(const float* x, int cols, int ng, int g, int zp,
                                       i8* tables, float* hts, float* xs) {
    int gi = blockIdx.x * blockDim.x + threadIdx.x;
    if (gi >= ng) return;
    int apg = g / 4;
    float m = 0.0f, sum = 0.0f;
    bool bad = false;
    for (int a = 0; a < apg; a++) {
        int c = (gi * apg + a) * 4;
        float x0 = c < cols ? x[c] : 0.0f, x1 = c + 1 < cols ? x[c + 1] : 0.0f;
        float x2 = c + 2 < cols ? x[c + 2] : 0.0f, x3 = c + 3 < cols ? x[c + 3] : 0.0f;
        float ma = ((fabsf(x0) + fabsf(x1)) + fabsf(x2)) + fabsf(x3);
        bad |= !isfinite(ma);
        m = fmaxf(m, ma);
        if (zp) sum += -(((-x0 + -x1) + -x2) - x3);
    }
    i8* tabs = tables + (u64)16 * gi * apg;
    if (bad || m == 0.0f) {
        for (int e = 0; e < 16 * apg; e++) tabs[e] = 0;
    } else {
        float inv = __fdiv_rn(127.0f, m);
        for (int a = 0; a < apg; a++) {
            int c = (gi * apg + a) * 4;
            float x0 = c < cols ? x[c] : 0.0f, x1 = c + 1 < cols ? x[c + 1] : 0.0f;
            float x2 = c + 2 < cols ? x[c + 2] : 0.0f, x3 = c + 3 < cols ? x[c + 3] : 0.0f;
            for (int i = 0; i < 8; i++) {
                float s0 = (i & 1) ? 1.0f : -1.0f, s1 = (i & 2) ? 1.0f : -1.0f;
                float s2 = (i & 4) ? 1.0f : -1.0f;
                float t = ((x0 * s0 + x1 * s1) + x2 * s2) - x3;
                int q = rne_i32(__fmul_rn(t, inv));
                tabs[16 * a + i] = (i8)q;
                tabs[16 * a + 15 - i] = (i8)(-q);
            }
        }
    }
    hts[gi] = bad ? __int_as_float(0x7FC00000) : __fdiv_rn(m, 127.0f) * 0.5f;
    xs[gi] = sum;
}

// Group record: bit-plane blocks (16 g bits / 8 bytes), f16 scale[16], f16 zero[16] (zp).
// One thread per row; groups in order, as the CPU epilogue.
extern "C" __global__ void tp_linear_lut(const u8* w, const i8* tables, const float* hts,
                                         const float* xs, const float* b, float* y,
                                         int n_out, int ng, int g, int bits, int zp) {
    int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= n_out) return;
    int i = o % 16;
    int wbytes = 16 * g * bits / 8;
    int gb = wbytes + 32 + (zp ? 32 : 0);
    const u8* tile = w + (u64)(o / 16) * ng * gb;
    int tabs_per_group = g / 4;
    float c = (float)((1 << bits) - 1) * 0.5f;
    float ya = 0.0f;
    for (int gi = 0; gi < ng; gi++) {
        const u8* gbuf = tile + (u64)gi * gb;
        const i8* tabs = tables + (u64)16 * gi * tabs_per_group;
        int acc = 0;
        for (int blk = 0; blk < wbytes / 32; blk++) {
            const i8* ta;
            const i8* tb;
            int hi_shift;
            if (bits == 4) {
                ta = tabs + 16 * blk; tb = ta; hi_shift = 2;
            } else {
                ta = tabs + 32 * blk; tb = ta + 16; hi_shift = 0;
            }
            for (int j = 0; j < 2; j++) {
                u8 byte = gbuf[32 * blk + 2 * i + j];
                acc += (int)ta[byte & 15] << j;
                acc += (int)tb[byte >> 4] << (j + hi_shift);
            }
        }
        float s = ld_f16(gbuf + wbytes + 2 * i);
        float t = (float)acc * hts[gi];
        if (zp) {
            float z = ld_f16(gbuf + wbytes + 32 + 2 * i);
            t = t + (c - z) * xs[gi];
        }
        ya = ya + t * s;
    }
    y[o] = b ? ya + b[o] : ya;
}

// ---------------------------------------------------------------- elementwise

extern "C" __global__ void tp_add(float* y, const float* x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = y[i] + x[i];
}

extern "C" __global__ void tp_axpy(float* y, const float* x, float a, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = y[i] + a * x[i];
}

// GELU (erf form): 0.5 t erfc(-t / sqrt 2), as the CPU.
extern "C" __global__ void tp_gelu(float* x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float t = x[i];
        x[i] = 0.5f * t * erfcf(-t * 0.70710678118654752440f);
    }
}

// h = GELU(h) + u_t (the conv branch's residual, before the expert's layer norm).
extern "C" __global__ void tp_gelu_add(float* h, const float* ut, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float t = h[i];
        h[i] = 0.5f * t * erfcf(-t * 0.70710678118654752440f) + ut[i];
    }
}

// Layer norm over rows of `width`: mean = scale sum(x) / n, var = sum((scale x - mean)^2) / n,
// y = (scale x - mean) / sqrt(var + eps) g + b. One warp per row; x may equal y.
extern "C" __global__ void tp_layernorm(const float* x, float* y, const float* g, const float* b,
                                        int rows, int width, float eps, float scale) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (warp >= rows) return;
    const float* xr = x + (u64)warp * width;
    float* yr = y + (u64)warp * width;
    float n = (float)width;
    float s = 0.0f;
    for (int c = lane; c < width; c += 32) s += xr[c];
    float mean = scale * warp_sum(s) / n;
    float v = 0.0f;
    for (int c = lane; c < width; c += 32) {
        float t = scale * xr[c] - mean;
        v += t * t;
    }
    float inv = 1.0f / sqrtf(warp_sum(v) / n + eps);
    __syncwarp();
    for (int c = lane; c < width; c += 32) yr[c] = (scale * xr[c] - mean) * inv * g[c] + b[c];
}

// ---------------------------------------------------------------- attention

// Multi-head self-attention without masking; one thread per (token, head),
// softmax in three passes so no score buffer is needed.
extern "C" __global__ void tp_attention(const float* q, const float* k, const float* v,
                                        float* out, int l, int d, int heads) {
    int id = blockIdx.x * blockDim.x + threadIdx.x;
    if (id >= l * heads) return;
    int i = id / heads, h = id % heads, dh = d / heads;
    float inv_sqrt = 1.0f / sqrtf((float)dh);
    const float* qh = q + (u64)i * d + h * dh;
    float mx = NEG_INF;
    for (int j = 0; j < l; j++) {
        const float* kh = k + (u64)j * d + h * dh;
        float s = 0.0f;
        for (int e = 0; e < dh; e++) s += qh[e] * kh[e];
        mx = fmaxf(mx, s * inv_sqrt);
    }
    float sum = 0.0f;
    for (int j = 0; j < l; j++) {
        const float* kh = k + (u64)j * d + h * dh;
        float s = 0.0f;
        for (int e = 0; e < dh; e++) s += qh[e] * kh[e];
        sum += expf(s * inv_sqrt - mx);
    }
    float* oh = out + (u64)i * d + h * dh;
    for (int e = 0; e < dh; e++) oh[e] = 0.0f;
    for (int j = 0; j < l; j++) {
        const float* kh = k + (u64)j * d + h * dh;
        float s = 0.0f;
        for (int e = 0; e < dh; e++) s += qh[e] * kh[e];
        float p = expf(s * inv_sqrt - mx) / sum;
        const float* vh = v + (u64)j * d + h * dh;
        for (int e = 0; e < dh; e++) oh[e] = oh[e] + p * vh[e];
    }
}

// Attention pooling with a learned query: out = softmax(u query / sqrt d)^T u.
// One block; dynamic shared memory holds the l scores.
extern "C" __global__ void tp_attn_pool(const float* u, const float* query, float* out,
                                        int l, int d) {
    extern __shared__ float sc[];
    float inv_sqrt = 1.0f / sqrtf((float)d);
    for (int j = threadIdx.x; j < l; j += blockDim.x) {
        float s = 0.0f;
        for (int c = 0; c < d; c++) s += query[c] * u[(u64)j * d + c];
        sc[j] = s * inv_sqrt;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float mx = NEG_INF, sum = 0.0f;
        for (int j = 0; j < l; j++) mx = fmaxf(mx, sc[j]);
        for (int j = 0; j < l; j++) { sc[j] = expf(sc[j] - mx); sum += sc[j]; }
        for (int j = 0; j < l; j++) sc[j] = sc[j] / sum;
    }
    __syncthreads();
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float o = 0.0f;
        for (int j = 0; j < l; j++) o = o + sc[j] * u[(u64)j * d + c];
        out[c] = o;
    }
}

// ---------------------------------------------------------------- routing

// Router logits: softmax gating uses dot products, Laplace gating -||p - w_j||;
// logits = (acc ? logits : 0) + scale * raw. One warp per expert.
extern "C" __global__ void tp_gate(const float* p, const float* w, float* logits, int n, int d,
                                   int laplace, int acc, float scale) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (warp >= n) return;
    const float* wj = w + (u64)warp * d;
    float s = 0.0f;
    for (int c = lane; c < d; c += 32) {
        if (laplace) {
            float t = p[c] - wj[c];
            s += t * t;
        } else {
            s += p[c] * wj[c];
        }
    }
    s = warp_sum(s);
    if (lane == 0) {
        float raw = laplace ? -sqrtf(s) : s;
        logits[warp] = (acc ? logits[warp] : 0.0f) + scale * raw;
    }
}

// Top-k over the experts in `mask` (NaN ranks last, ties to the lower index),
// then softmax over the chosen logits: route = [count, idx[k], gate[k]].
extern "C" __global__ void tp_route(const float* logits, int n, u32 mask_lo, u32 mask_hi,
                                    int k, float* route) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    u64 valid = n >= 64 ? ~0ull : ((1ull << n) - 1);
    u64 remaining = (((u64)mask_hi << 32) | mask_lo) & valid;
    int kk = min(k, __popcll(remaining));
    float gate[64];
    float mx = NEG_INF;
    for (int slot = 0; slot < kk; slot++) {
        int best = __ffsll(remaining) - 1;
        u64 bits = remaining & (remaining - 1);
        while (bits) {
            int j = __ffsll(bits) - 1;
            float a = logits[j], bb = logits[best];
            if (!isnan(a) && (isnan(bb) || a > bb)) best = j;
            bits &= bits - 1;
        }
        remaining &= ~(1ull << best);
        route[1 + slot] = (float)best;
        gate[slot] = logits[best];
        mx = fmaxf(mx, gate[slot]);
    }
    float sum = 0.0f;
    for (int s = 0; s < kk; s++) { gate[s] = expf(gate[s] - mx); sum += gate[s]; }
    for (int s = 0; s < kk; s++) route[1 + k + s] = gate[s] / sum;
    route[0] = (float)kk;
}

// ---------------------------------------------------------------- experts

// [u_{t-1}; u_t; u_{t+1}] with zero padding: the conv1d (k = 3) as one product.
extern "C" __global__ void tp_conv_cat(const float* u, int l, int d, int token, float* cat) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= 3 * d) return;
    int tap = i / d, c = i % d, s = token + tap - 1;
    cat[i] = (s >= 0 && s < l) ? u[(u64)s * d + c] : 0.0f;
}
