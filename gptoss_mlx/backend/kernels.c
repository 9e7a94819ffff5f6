/* CPU kernels for gpt-oss on the MLX CPU backend: built at first use by cpu_kernels.py with the
 * system C compiler (-O3 -march=native -fopenmp) and called through ctypes on zero-copy numpy
 * views of MLX arrays. Activations and accumulation are float32; weights are read as stored:
 * dense matrices in float32 or bfloat16, experts in MXFP4 (two E2M1 codes a byte, low nibble
 * first, one E8M0 scale per 32 values: MLX's "mxfp4" layout).
 *
 * Every function has a portable C path; AVX-512 or AVX2 (with FMA) paths are used where the
 * compiler targets them (-march=native: this machine).
 * Row loops are scheduled dynamically: on a shared machine a preempted thread would otherwise
 * hold up the whole loop until it runs again.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define USE_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define USE_AVX2 1
#endif

enum { F32 = 0, BF16 = 1 };
#define GROUP 32
#define MAX_M 8

static const float FP4[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                              -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};
static float E8M0[256];
#if defined(USE_AVX512) || defined(USE_AVX2)
/* exp(r) = 1 + r + r^2/2 + ... + r^7/5040 by Horner, highest power first (the vector exps). */
static const float EXP_TAYLOR[8] = {1.0f / 5040, 1.0f / 720, 1.0f / 120, 1.0f / 24,
                                    1.0f / 6,    0.5f,       1.0f,       1.0f};
#endif

__attribute__((constructor)) static void init_tables(void) {
    for (int i = 0; i < 255; i++) E8M0[i] = ldexpf(1.0f, i - 127);
    E8M0[255] = NAN;
}

int gptoss_num_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

int gptoss_simd(void) {
#if defined(USE_AVX512)
    return 512;
#elif defined(USE_AVX2)
    return 256;
#else
    return 0;
#endif
}

static inline float bf16_to_float(uint16_t h) {
    union { uint32_t u; float f; } c = {(uint32_t)h << 16};
    return c.f;
}

static inline float load_scalar(const void *p, int dtype, int64_t i) {
    return dtype == BF16 ? bf16_to_float(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

#ifdef USE_AVX2
static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

static inline float hmax256(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}

static inline __m256 load8(const void *w, int dtype, int64_t i) {
    if (dtype == BF16) {
        __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    return _mm256_loadu_ps((const float *)w + i);
}

/* exp(x) as exp512 above does it, 8 lanes: 2^n built in the exponent bits (n >= -126). */
static inline __m256 exp256(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(EXP_TAYLOR[0]);
    for (int i = 1; i < 8; i++) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_TAYLOR[i]));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* E2M1 values of 8 codes (bits 0-2 the magnitude's index, bit 3 the sign; higher bits
 * ignored): a permute of the 8 magnitudes, then the sign bit. */
static inline __m256 fp4_256(__m256i code, __m256 mags) {
    __m256i sign = _mm256_slli_epi32(_mm256_and_si256(code, _mm256_set1_epi32(8)), 28);
    return _mm256_xor_ps(_mm256_permutevar8x32_ps(mags, code), _mm256_castsi256_ps(sign));
}

static inline __m256i bytes8(const uint8_t *p) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
}
#endif

#ifdef USE_AVX512
static inline __m512 load16(const void *w, int dtype, int64_t i) {
    if (dtype == BF16) {
        __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)w + i));
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    return _mm512_loadu_ps((const float *)w + i);
}

/* exp(x) for x <= 88: range reduction to r in [-ln2/2, ln2/2], degree-7 Taylor (rel. error
 * < 1e-8 there), scaled by 2^n with vscalefps. Inputs below -87 give ~0, as softmax wants. */
static inline __m512 exp512(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(EXP_TAYLOR[0]);
    for (int i = 1; i < 8; i++) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_TAYLOR[i]));
    return _mm512_scalef_ps(p, n);
}
#endif

/* One vector of VW floats, for the kernels whose logic is the same at every width (the dense dot
 * products and the attention softmax); the MXFP4 and windowed-attention kernels differ by width
 * (16-entry table lookups and lane masks exist only in AVX-512) and keep their own paths. */
#if defined(USE_AVX512)
#define VW 16
typedef __m512 vf;
#define vzero _mm512_setzero_ps
#define vset1 _mm512_set1_ps
#define vloadu _mm512_loadu_ps
#define vstoreu _mm512_storeu_ps
#define vadd _mm512_add_ps
#define vsub _mm512_sub_ps
#define vmax _mm512_max_ps
#define vfma _mm512_fmadd_ps
#define vsum _mm512_reduce_add_ps
#define vhmax _mm512_reduce_max_ps
#define vexp exp512
#define vloadw load16
#elif defined(USE_AVX2)
#define VW 8
typedef __m256 vf;
#define vzero _mm256_setzero_ps
#define vset1 _mm256_set1_ps
#define vloadu _mm256_loadu_ps
#define vstoreu _mm256_storeu_ps
#define vadd _mm256_add_ps
#define vsub _mm256_sub_ps
#define vmax _mm256_max_ps
#define vfma _mm256_fmadd_ps
#define vsum hsum256
#define vhmax hmax256
#define vexp exp256
#define vloadw load8
#endif

/* ---- dense: Y[m, n] = W[n, :] . X[m, :] + bias[n] ---------------------------------------- */

/* Four rows against one x: four independent accumulation chains. */
static void dot4_rows(const void *W, int dtype, int64_t n, int64_t K, const float *x, float *out) {
    int64_t k = 0;
    float acc[4] = {0, 0, 0, 0};
#ifdef VW
    vf a0 = vzero(), a1 = a0, a2 = a0, a3 = a0;
    for (; k + VW <= K; k += VW) {
        vf xv = vloadu(x + k);
        a0 = vfma(vloadw(W, dtype, (n + 0) * K + k), xv, a0);
        a1 = vfma(vloadw(W, dtype, (n + 1) * K + k), xv, a1);
        a2 = vfma(vloadw(W, dtype, (n + 2) * K + k), xv, a2);
        a3 = vfma(vloadw(W, dtype, (n + 3) * K + k), xv, a3);
    }
    acc[0] = vsum(a0);
    acc[1] = vsum(a1);
    acc[2] = vsum(a2);
    acc[3] = vsum(a3);
#endif
    for (int r = 0; r < 4; r++) {
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int64_t kk = k; kk < K; kk++) s += load_scalar(W, dtype, (n + r) * K + kk) * x[kk];
        out[r] = acc[r] + s;
    }
}

/* One row against up to MAX_M x rows (the row is read once). */
static void dot_row_m(const void *W, int dtype, int64_t n, int64_t K, const float *X, int64_t M,
                      float *out) {
    int64_t k = 0;
    for (int64_t m = 0; m < M; m++) out[m] = 0.0f;
#ifdef VW
    vf acc[MAX_M];
    for (int64_t m = 0; m < M; m++) acc[m] = vzero();
    for (; k + VW <= K; k += VW) {
        vf w = vloadw(W, dtype, n * K + k);
        for (int64_t m = 0; m < M; m++) acc[m] = vfma(w, vloadu(X + m * K + k), acc[m]);
    }
    for (int64_t m = 0; m < M; m++) out[m] = vsum(acc[m]);
#endif
    for (int64_t m = 0; m < M; m++) {
        float s = 0.0f;
        for (int64_t kk = k; kk < K; kk++) s += load_scalar(W, dtype, n * K + kk) * X[m * K + kk];
        out[m] += s;
    }
}

void gptoss_linear(const void *W, int wdtype, int64_t N, int64_t K, const float *X, int64_t M,
                   const void *bias, int bdtype, float *Y) {
    for (int64_t m0 = 0; m0 < M; m0 += MAX_M) {
        int64_t mb = M - m0 < MAX_M ? M - m0 : MAX_M;
        const float *Xb = X + m0 * K;
        float *Yb = Y + m0 * N;
        if (mb == 1) {
            int64_t N4 = N / 4 * 4;
#pragma omp parallel for schedule(dynamic, 16)
            for (int64_t n = 0; n < N4; n += 4) {
                float out[4];
                dot4_rows(W, wdtype, n, K, Xb, out);
                for (int r = 0; r < 4; r++) Yb[n + r] = out[r] + (bias ? load_scalar(bias, bdtype, n + r) : 0.0f);
            }
            for (int64_t n = N4; n < N; n++) {
                float out;
                dot_row_m(W, wdtype, n, K, Xb, 1, &out);
                Yb[n] = out + (bias ? load_scalar(bias, bdtype, n) : 0.0f);
            }
        } else {
#pragma omp parallel for schedule(dynamic, 64)
            for (int64_t n = 0; n < N; n++) {
                float out[MAX_M];
                dot_row_m(W, wdtype, n, K, Xb, mb, out);
                float b = bias ? load_scalar(bias, bdtype, n) : 0.0f;
                for (int64_t m = 0; m < mb; m++) Yb[m * N + n] = out[m] + b;
            }
        }
    }
}

void gptoss_bf16_to_f32(const uint16_t *src, int64_t n, float *dst) {
#pragma omp parallel for schedule(dynamic, 4)
    for (int64_t i = 0; i < n; i += 4096) {
        int64_t end = i + 4096 < n ? i + 4096 : n;
        for (int64_t j = i; j < end; j++) dst[j] = bf16_to_float(src[j]);
    }
}

/* ---- MXFP4 ------------------------------------------------------------------------------- */

/* Within each group of 32, even positions first then odd ones: the order the low and high
 * nibbles of 16 bytes come out in, so a dot product needs no shuffle of the weights. */
static void deinterleave(const float *x, int64_t K, float *xs) {
    for (int64_t g = 0; g < K; g += GROUP)
        for (int i = 0; i < GROUP / 2; i++) {
            xs[g + i] = x[g + 2 * i];
            xs[g + GROUP / 2 + i] = x[g + 2 * i + 1];
        }
}

/* Dot products of rows r0..r0+R-1 of an MXFP4 matrix ([rows, K/2] bytes, [rows, K/32] scales)
 * with T deinterleaved vectors xs[t] (stride K); out[r * T + t]. The group sum is scaled once:
 * scales are powers of two, so this equals scaling every weight, up to summation order. */
static void q4_dot(const uint8_t *w, const uint8_t *s, int64_t K, const float *xs, int64_t T,
                   float *out) {
    const int64_t G = K / GROUP;
#ifdef USE_AVX512
    const __m512 lut = _mm512_loadu_ps(FP4);
    if (T == 1) {
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        int64_t g = 0;
        for (; g + 2 <= G; g += 2) {
            __m512i v0 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(w + 16 * g)));
            __m512i v1 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(w + 16 * g + 16)));
            __m512 t0 = _mm512_mul_ps(_mm512_permutexvar_ps(v0, lut), _mm512_loadu_ps(xs + 32 * g));
            __m512 t1 = _mm512_mul_ps(_mm512_permutexvar_ps(v1, lut), _mm512_loadu_ps(xs + 32 * g + 32));
            t0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v0, 4), lut),
                                 _mm512_loadu_ps(xs + 32 * g + 16), t0);
            t1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v1, 4), lut),
                                 _mm512_loadu_ps(xs + 32 * g + 48), t1);
            a0 = _mm512_fmadd_ps(t0, _mm512_set1_ps(E8M0[s[g]]), a0);
            a1 = _mm512_fmadd_ps(t1, _mm512_set1_ps(E8M0[s[g + 1]]), a1);
        }
        for (; g < G; g++) {
            __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(w + 16 * g)));
            __m512 t = _mm512_mul_ps(_mm512_permutexvar_ps(v, lut), _mm512_loadu_ps(xs + 32 * g));
            t = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), lut),
                                _mm512_loadu_ps(xs + 32 * g + 16), t);
            a0 = _mm512_fmadd_ps(t, _mm512_set1_ps(E8M0[s[g]]), a0);
        }
        out[0] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
        return;
    }
    __m512 acc[MAX_M];
    for (int64_t t = 0; t < T; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t g = 0; g < G; g++) {
        __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(w + 16 * g)));
        __m512 lo = _mm512_permutexvar_ps(v, lut);
        __m512 hi = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), lut);
        __m512 sc = _mm512_set1_ps(E8M0[s[g]]);
        lo = _mm512_mul_ps(lo, sc);
        hi = _mm512_mul_ps(hi, sc);
        for (int64_t t = 0; t < T; t++) {
            const float *x = xs + t * K + 32 * g;
            acc[t] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(x), acc[t]);
            acc[t] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(x + 16), acc[t]);
        }
    }
    for (int64_t t = 0; t < T; t++) out[t] = _mm512_reduce_add_ps(acc[t]);
#elif defined(USE_AVX2)
    /* Bytes 0-7 and 8-15 of a group: low nibbles pair with xs[0..15], high with xs[16..31]. */
    const __m256 mags = _mm256_loadu_ps(FP4);
    if (T == 1) {
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        for (int64_t g = 0; g < G; g++) {
            __m256i v0 = bytes8(w + 16 * g), v1 = bytes8(w + 16 * g + 8);
            const float *x = xs + 32 * g;
            __m256 t0 = _mm256_mul_ps(fp4_256(v0, mags), _mm256_loadu_ps(x));
            __m256 t1 = _mm256_mul_ps(fp4_256(_mm256_srli_epi32(v0, 4), mags), _mm256_loadu_ps(x + 16));
            t0 = _mm256_fmadd_ps(fp4_256(v1, mags), _mm256_loadu_ps(x + 8), t0);
            t1 = _mm256_fmadd_ps(fp4_256(_mm256_srli_epi32(v1, 4), mags), _mm256_loadu_ps(x + 24), t1);
            __m256 sc = _mm256_set1_ps(E8M0[s[g]]);
            a0 = _mm256_fmadd_ps(t0, sc, a0);
            a1 = _mm256_fmadd_ps(t1, sc, a1);
        }
        out[0] = hsum256(_mm256_add_ps(a0, a1));
        return;
    }
    __m256 acc[MAX_M];
    for (int64_t t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t g = 0; g < G; g++) {
        __m256i v0 = bytes8(w + 16 * g), v1 = bytes8(w + 16 * g + 8);
        __m256 sc = _mm256_set1_ps(E8M0[s[g]]);
        __m256 w0 = _mm256_mul_ps(fp4_256(v0, mags), sc);
        __m256 w1 = _mm256_mul_ps(fp4_256(v1, mags), sc);
        __m256 w2 = _mm256_mul_ps(fp4_256(_mm256_srli_epi32(v0, 4), mags), sc);
        __m256 w3 = _mm256_mul_ps(fp4_256(_mm256_srli_epi32(v1, 4), mags), sc);
        for (int64_t t = 0; t < T; t++) {
            const float *x = xs + t * K + 32 * g;
            __m256 a = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x), acc[t]);
            a = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + 8), a);
            a = _mm256_fmadd_ps(w2, _mm256_loadu_ps(x + 16), a);
            acc[t] = _mm256_fmadd_ps(w3, _mm256_loadu_ps(x + 24), a);
        }
    }
    for (int64_t t = 0; t < T; t++) out[t] = hsum256(acc[t]);
#else
    for (int64_t t = 0; t < T; t++) {
        float total = 0.0f;
        for (int64_t g = 0; g < G; g++) {
            const uint8_t *b = w + 16 * g;
            const float *x = xs + t * K + 32 * g;
            float sum = 0.0f;
            for (int i = 0; i < 16; i++) sum += FP4[b[i] & 15] * x[i] + FP4[b[i] >> 4] * x[16 + i];
            total += sum * E8M0[s[g]];
        }
        out[t] = total;
    }
#endif
}

static inline float swiglu(float g, float u, float alpha, float limit) {
    g = fminf(g, limit);
    u = fminf(fmaxf(u, -limit), limit);
    return (u + 1.0f) * (g / (1.0f + expf(-alpha * g)));
}

typedef struct {
    const uint8_t *w;   /* [E, rows, K/2] */
    const uint8_t *s;   /* [E, rows, K/32] */
    const void *b;      /* [E, rows], f32 or bf16 */
} QMat;

/* One expert's clamped SwiGLU MLP on T <= MAX_M tokens, inside a parallel region.
 * xs: [T, H] deinterleaved; gu: [T, 2, I] work; hs: [T, I] work; D: [T, H] output. */
static void expert_tokens(QMat g, QMat u, QMat d, int bdtype, int64_t e, int64_t H, int64_t I,
                          const float *xs, int64_t T, float alpha, float limit, float *gu,
                          float *hs, float *D) {
    const int64_t gstride = I * H / 2, gsc = I * H / GROUP, dstride = H * I / 2, dsc = H * I / GROUP;
#pragma omp for schedule(dynamic, 64)
    for (int64_t r = 0; r < 2 * I; r++) {
        QMat m = r < I ? g : u;
        int64_t row = r < I ? r : r - I;
        float out[MAX_M];
        q4_dot(m.w + e * gstride + row * (H / 2), m.s + e * gsc + row * (H / GROUP), H, xs, T, out);
        float b = load_scalar(m.b, bdtype, e * I + row);
        for (int64_t t = 0; t < T; t++) gu[t * 2 * I + r] = out[t] + b;
    }
#pragma omp for schedule(static)
    for (int64_t t = 0; t < T; t++) {
        float h[GROUP];
        for (int64_t c = 0; c < I; c += GROUP) {
            for (int i = 0; i < GROUP; i++)
                h[i] = swiglu(gu[t * 2 * I + c + i], gu[t * 2 * I + I + c + i], alpha, limit);
            deinterleave(h, GROUP, hs + t * I + c);
        }
    }
#pragma omp for schedule(dynamic, 32)
    for (int64_t r = 0; r < H; r++) {
        float out[MAX_M];
        q4_dot(d.w + e * dstride + r * (I / 2), d.s + e * dsc + r * (I / GROUP), I, hs, T, out);
        float b = load_scalar(d.b, bdtype, e * H + r);
        for (int64_t t = 0; t < T; t++) D[t * H + r] = out[t] + b;
    }
}

/* Tokens X [n, H] all routed to expert e: D [n, H] = down(swiglu(gate x, up x)) + biases. */
void gptoss_expert_mxfp4(const float *X, int64_t n, int64_t H, int64_t I, int64_t e,
                         const uint8_t *wg, const uint8_t *sg, const void *bg,
                         const uint8_t *wu, const uint8_t *su, const void *bu,
                         const uint8_t *wd, const uint8_t *sd, const void *bd, int bdtype,
                         float alpha, float limit, float *D) {
    QMat g = {wg, sg, bg}, u = {wu, su, bu}, d = {wd, sd, bd};
    float *xs = malloc(sizeof(float) * (MAX_M * H + MAX_M * 3 * I));
    float *gu = xs + MAX_M * H, *hs = gu + MAX_M * 2 * I;
    for (int64_t t0 = 0; t0 < n; t0 += MAX_M) {
        int64_t T = n - t0 < MAX_M ? n - t0 : MAX_M;
        for (int64_t t = 0; t < T; t++) deinterleave(X + (t0 + t) * H, H, xs + t * H);
#pragma omp parallel
        expert_tokens(g, u, d, bdtype, e, H, I, xs, T, alpha, limit, gu, hs, D + t0 * H);
    }
    free(xs);
}

/* Decode: every token m of X [M, H] through its k experts idx[m, :] weighted by gates[m, :];
 * Y [M, H] = sum_j gates[m, j] * expert_{idx[m, j]}(X[m]). */
void gptoss_moe_mxfp4(const float *X, int64_t M, int64_t H, int64_t I, const int32_t *idx,
                      const float *gates, int64_t k,
                      const uint8_t *wg, const uint8_t *sg, const void *bg,
                      const uint8_t *wu, const uint8_t *su, const void *bu,
                      const uint8_t *wd, const uint8_t *sd, const void *bd, int bdtype,
                      float alpha, float limit, float *Y) {
    const int64_t gstride = I * H / 2, gsc = I * H / GROUP, dstride = H * I / 2, dsc = H * I / GROUP;
    float *xs = malloc(sizeof(float) * (H + k * 3 * I));
    float *gu = xs + H, *hs = gu + k * 2 * I;
    for (int64_t m = 0; m < M; m++) {
        const int32_t *ex = idx + m * k;
        deinterleave(X + m * H, H, xs);
#pragma omp parallel
        {
#pragma omp for schedule(dynamic, 64)
            for (int64_t r = 0; r < k * 2 * I; r++) {
                int64_t j = r / (2 * I), q = r % (2 * I), e = ex[j];
                const uint8_t *w = q < I ? wg : wu, *s = q < I ? sg : su;
                const void *b = q < I ? bg : bu;
                int64_t row = q < I ? q : q - I;
                float out;
                q4_dot(w + e * gstride + row * (H / 2), s + e * gsc + row * (H / GROUP), H, xs, 1, &out);
                gu[r] = out + load_scalar(b, bdtype, e * I + row);
            }
#pragma omp for schedule(static)
            for (int64_t j = 0; j < k; j++) {
                float h[GROUP];
                for (int64_t c = 0; c < I; c += GROUP) {
                    for (int i = 0; i < GROUP; i++)
                        h[i] = swiglu(gu[j * 2 * I + c + i], gu[j * 2 * I + I + c + i], alpha, limit);
                    deinterleave(h, GROUP, hs + j * I + c);
                }
            }
#pragma omp for schedule(dynamic, 32)
            for (int64_t r = 0; r < H; r++) {
                float acc = 0.0f;
                for (int64_t j = 0; j < k; j++) {
                    int64_t e = ex[j];
                    float out;
                    q4_dot(wd + e * dstride + r * (I / 2), sd + e * dsc + r * (I / GROUP), I, hs + j * I, 1, &out);
                    acc += gates[m * k + j] * (out + load_scalar(bd, bdtype, e * H + r));
                }
                Y[m * H + r] = acc;
            }
        }
    }
    free(xs);
}

/* Dense float32 copy of rows [rows, K] of an MXFP4 matrix (for BLAS in prefill). */
void gptoss_dequant_mxfp4(const uint8_t *w, const uint8_t *s, int64_t rows, int64_t K, float *out) {
    const int64_t G = K / GROUP;
#pragma omp parallel for schedule(dynamic, 64)
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *wr = w + r * (K / 2), *sr = s + r * G;
        float *o = out + r * K;
#ifdef USE_AVX512
        const __m512 lut = _mm512_loadu_ps(FP4);
        const __m512i lo_idx = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
        const __m512i hi_idx = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
        for (int64_t g = 0; g < G; g++) {
            __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(wr + 16 * g)));
            __m512 sc = _mm512_set1_ps(E8M0[sr[g]]);
            __m512 lo = _mm512_mul_ps(_mm512_permutexvar_ps(v, lut), sc);
            __m512 hi = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), lut), sc);
            _mm512_storeu_ps(o + 32 * g, _mm512_permutex2var_ps(lo, lo_idx, hi));
            _mm512_storeu_ps(o + 32 * g + 16, _mm512_permutex2var_ps(lo, hi_idx, hi));
        }
#elif defined(USE_AVX2)
        const __m256 mags = _mm256_loadu_ps(FP4);
        for (int64_t g = 0; g < G; g++) {
            __m256 sc = _mm256_set1_ps(E8M0[sr[g]]);
            for (int h = 0; h < 2; h++) { /* bytes 8h..8h+7 -> values 16h..16h+15, lo/hi alternating */
                __m256i v = bytes8(wr + 16 * g + 8 * h);
                __m256 lo = _mm256_mul_ps(fp4_256(v, mags), sc);
                __m256 hi = _mm256_mul_ps(fp4_256(_mm256_srli_epi32(v, 4), mags), sc);
                __m256 a = _mm256_unpacklo_ps(lo, hi), b = _mm256_unpackhi_ps(lo, hi);
                _mm256_storeu_ps(o + 32 * g + 16 * h, _mm256_permute2f128_ps(a, b, 0x20));
                _mm256_storeu_ps(o + 32 * g + 16 * h + 8, _mm256_permute2f128_ps(a, b, 0x31));
            }
        }
#else
        for (int64_t g = 0; g < G; g++) {
            float sc = E8M0[sr[g]];
            for (int i = 0; i < 16; i++) {
                o[32 * g + 2 * i] = FP4[wr[16 * g + i] & 15] * sc;
                o[32 * g + 2 * i + 1] = FP4[wr[16 * g + i] >> 4] * sc;
            }
        }
#endif
    }
}

/* Prefill, token-minor layout (BLAS is faster with the weight rows as the long dimension):
 * GU [2I, n] (gate rows then up rows, before biases) -> H [I, n]. */
void gptoss_swiglu_bias_t(const float *GU, int64_t n, int64_t I, const void *bg, const void *bu,
                          int64_t e, int bdtype, float alpha, float limit, float *H) {
#pragma omp parallel for schedule(dynamic, 64)
    for (int64_t c = 0; c < I; c++) {
        float b_g = load_scalar(bg, bdtype, e * I + c), b_u = load_scalar(bu, bdtype, e * I + c);
        for (int64_t t = 0; t < n; t++)
            H[c * n + t] = swiglu(GU[c * n + t] + b_g, GU[(I + c) * n + t] + b_u, alpha, limit);
    }
}

/* ---- attention with sinks ------------------------------------------------------------------ */


#define ATT_G 4  /* query heads of one KV head processed together (they see the same keys) */
#define ATT_BK 16

/* Causal attention with learned sinks and grouped KV heads, for one batch row:
 * O[i, h, :] = sum_j softmax_j(scale q_h,i . k_j | sink_h) v_j over the keys query i sees:
 * key j (absolute position k_start + j) is visible from query i (position q_start + i) if
 * k_pos <= q_pos and, with a window, q_pos - k_pos < window. The sink joins the softmax
 * denominator only. Q [H, L, D]; K, V [KV, S, D] rows contiguous, head stride kv_stride. */
void gptoss_attention(const float *Q, const float *K, const float *V, int64_t kv_stride,
                      const float *sinks, int64_t H, int64_t KV, int64_t L, int64_t S, int64_t D,
                      int64_t q_start, int64_t k_start, int64_t window, float scale, float *O) {
    const int64_t rep = H / KV;
    const int64_t groups = (rep + ATT_G - 1) / ATT_G;
    /* With many queries, K transposed per KV head ([D, S]) makes scores for 16 keys 16-wide
     * FMAs; a few queries (decode) read K rows directly instead of copying all of it. */
    const int transposed = L >= 16;
    float *KT = transposed ? malloc(sizeof(float) * KV * D * S) : NULL;
    if (transposed) {
#pragma omp parallel for schedule(static)
        for (int64_t kh = 0; kh < KV; kh++)
            for (int64_t j = 0; j < S; j++)
                for (int64_t d = 0; d < D; d++) KT[(kh * D + d) * S + j] = K[kh * kv_stride + j * D + d];
    }
#pragma omp parallel for schedule(dynamic, 4)
    for (int64_t task = 0; task < KV * L * groups; task++) {
        const int64_t kh = task / (L * groups), i = (task / groups) % L, g0 = (task % groups) * ATT_G;
        const int64_t G = rep - g0 < ATT_G ? rep - g0 : ATT_G;
        const int64_t qpos = q_start + i;
        int64_t hi = qpos - k_start, lo = 0;
        if (hi > S - 1) hi = S - 1;
        if (window > 0 && qpos - window + 1 - k_start > 0) lo = qpos - window + 1 - k_start;
        const float *kt = transposed ? KT + kh * D * S : NULL;
        const float *kr = K + kh * kv_stride;
        const float *v = V + kh * kv_stride;
        float q[ATT_G][256], m[ATT_G], l[ATT_G], acc[ATT_G][256];
        for (int64_t g = 0; g < G; g++) {
            const int64_t h = kh * rep + g0 + g;
            for (int64_t d = 0; d < D; d++) q[g][d] = Q[(h * L + i) * D + d] * scale;
            m[g] = sinks[h];
            l[g] = 1.0f; /* exp(sink - m) with m = sink */
            for (int64_t d = 0; d < D; d++) acc[g][d] = 0.0f;
        }
        for (int64_t j0 = lo; j0 <= hi; j0 += ATT_BK) {
            const int64_t n = hi - j0 + 1 < ATT_BK ? hi - j0 + 1 : ATT_BK;
            float p[ATT_G][ATT_BK];
            for (int64_t g = 0; g < G; g++) {
#ifdef USE_AVX512
                const __mmask16 mask = (__mmask16)((1u << n) - 1u);
                __m512 s;
                if (kt) {
                    __m512 s0 = _mm512_setzero_ps(), s1 = s0;
                    int64_t d = 0;
                    for (; d + 2 <= D; d += 2) {
                        s0 = _mm512_fmadd_ps(_mm512_set1_ps(q[g][d]), _mm512_maskz_loadu_ps(mask, kt + d * S + j0), s0);
                        s1 = _mm512_fmadd_ps(_mm512_set1_ps(q[g][d + 1]), _mm512_maskz_loadu_ps(mask, kt + (d + 1) * S + j0), s1);
                    }
                    for (; d < D; d++)
                        s0 = _mm512_fmadd_ps(_mm512_set1_ps(q[g][d]), _mm512_maskz_loadu_ps(mask, kt + d * S + j0), s0);
                    s = _mm512_add_ps(s0, s1);
                } else {
                    float st[ATT_BK] = {0};
                    for (int64_t t = 0; t < n; t++) {
                        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
                        for (int64_t d = 0; d < D; d++) dot += q[g][d] * kr[(j0 + t) * D + d];
                        st[t] = dot;
                    }
                    s = _mm512_loadu_ps(st);
                }
                float bm = _mm512_mask_reduce_max_ps(mask, s);
                if (bm > m[g]) {
                    float c = expf(m[g] - bm);
                    l[g] *= c;
                    for (int64_t dd = 0; dd < D; dd++) acc[g][dd] *= c;
                    m[g] = bm;
                }
                __m512 e = _mm512_maskz_mov_ps(mask, exp512(_mm512_sub_ps(s, _mm512_set1_ps(m[g]))));
                l[g] += _mm512_reduce_add_ps(e);
                _mm512_storeu_ps(p[g], e);
#elif defined(USE_AVX2)
                const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                const __m256i k0 = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), lane);
                const __m256i k1 = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n - 8), lane);
                __m256 s0, s1;
                if (kt) {
                    __m256 a0 = _mm256_setzero_ps(), a1 = a0, b0 = a0, b1 = a0;
                    int64_t d = 0;
                    for (; d + 2 <= D; d += 2) {
                        const float *r0 = kt + d * S + j0, *r1 = r0 + S;
                        __m256 q0 = _mm256_set1_ps(q[g][d]), q1 = _mm256_set1_ps(q[g][d + 1]);
                        a0 = _mm256_fmadd_ps(q0, _mm256_maskload_ps(r0, k0), a0);
                        a1 = _mm256_fmadd_ps(q0, _mm256_maskload_ps(r0 + 8, k1), a1);
                        b0 = _mm256_fmadd_ps(q1, _mm256_maskload_ps(r1, k0), b0);
                        b1 = _mm256_fmadd_ps(q1, _mm256_maskload_ps(r1 + 8, k1), b1);
                    }
                    for (; d < D; d++) {
                        __m256 q0 = _mm256_set1_ps(q[g][d]);
                        a0 = _mm256_fmadd_ps(q0, _mm256_maskload_ps(kt + d * S + j0, k0), a0);
                        a1 = _mm256_fmadd_ps(q0, _mm256_maskload_ps(kt + d * S + j0 + 8, k1), a1);
                    }
                    s0 = _mm256_add_ps(a0, b0);
                    s1 = _mm256_add_ps(a1, b1);
                } else {
                    float st[ATT_BK] = {0};
                    for (int64_t t = 0; t < n; t++) {
                        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
                        for (int64_t d = 0; d < D; d++) dot += q[g][d] * kr[(j0 + t) * D + d];
                        st[t] = dot;
                    }
                    s0 = _mm256_loadu_ps(st);
                    s1 = _mm256_loadu_ps(st + 8);
                }
                const __m256 ninf = _mm256_set1_ps(-INFINITY);
                s0 = _mm256_blendv_ps(ninf, s0, _mm256_castsi256_ps(k0));
                s1 = _mm256_blendv_ps(ninf, s1, _mm256_castsi256_ps(k1));
                float bm = hmax256(_mm256_max_ps(s0, s1));
                if (bm > m[g]) {
                    float c = expf(m[g] - bm);
                    l[g] *= c;
                    for (int64_t dd = 0; dd < D; dd++) acc[g][dd] *= c;
                    m[g] = bm;
                }
                const __m256 mg = _mm256_set1_ps(m[g]);
                __m256 e0 = _mm256_and_ps(exp256(_mm256_sub_ps(s0, mg)), _mm256_castsi256_ps(k0));
                __m256 e1 = _mm256_and_ps(exp256(_mm256_sub_ps(s1, mg)), _mm256_castsi256_ps(k1));
                l[g] += hsum256(_mm256_add_ps(e0, e1));
                _mm256_storeu_ps(p[g], e0);
                _mm256_storeu_ps(p[g] + 8, e1);
#else
                float s[ATT_BK], bm = -INFINITY;
                for (int64_t t = 0; t < n; t++) {
                    float dot = 0.0f;
                    for (int64_t d = 0; d < D; d++)
                        dot += q[g][d] * (kt ? kt[d * S + j0 + t] : kr[(j0 + t) * D + d]);
                    s[t] = dot;
                    if (dot > bm) bm = dot;
                }
                if (bm > m[g]) {
                    float c = expf(m[g] - bm);
                    l[g] *= c;
                    for (int64_t dd = 0; dd < D; dd++) acc[g][dd] *= c;
                    m[g] = bm;
                }
                for (int64_t t = 0; t < n; t++) {
                    p[g][t] = expf(s[t] - m[g]);
                    l[g] += p[g][t];
                }
#endif
            }
            for (int64_t t = 0; t < n; t++) {
                const float *vr = v + (j0 + t) * D;
                for (int64_t g = 0; g < G; g++) {
                    const float pt = p[g][t];
#pragma omp simd
                    for (int64_t d = 0; d < D; d++) acc[g][d] += pt * vr[d];
                }
            }
        }
        for (int64_t g = 0; g < G; g++) {
            const int64_t h = kh * rep + g0 + g;
            const float inv = 1.0f / l[g];
            for (int64_t d = 0; d < D; d++) O[(i * H + h) * D + d] = acc[g][d] * inv;
        }
    }
    if (KT) free(KT);
}

/* Scores -> probabilities in place, for attention through BLAS: S [G, L, n] holds the scaled
 * scores of G query heads (one sink each) for L queries over n keys; query i sees keys
 * 0 .. last0 + i (the others are zeroed). Row (g, i): p_j = exp(s_j - m) / (sum_j exp(s_j - m)
 * + exp(sink_g - m)), m = max(max_j s_j, sink_g), so that P @ V is the attention output. */
void gptoss_softmax_sinks(float *S, int64_t G, int64_t L, int64_t n, int64_t last0,
                          const float *sinks) {
#pragma omp parallel for schedule(dynamic, 16)
    for (int64_t r = 0; r < G * L; r++) {
        const int64_t g = r / L, i = r % L;
        float *row = S + r * n;
        int64_t vis = last0 + i + 1;
        vis = vis > n ? n : (vis < 0 ? 0 : vis);
        float m = sinks[g], sum = 0.0f;
        int64_t j = 0;
#ifdef VW
        vf mv = vset1(m);
        for (; j + VW <= vis; j += VW) mv = vmax(mv, vloadu(row + j));
        m = vhmax(mv);
#endif
        for (; j < vis; j++) m = fmaxf(m, row[j]);
        j = 0;
#ifdef VW
        const vf mm = vset1(m);
        vf acc = vzero();
        for (; j + VW <= vis; j += VW) {
            vf e = vexp(vsub(vloadu(row + j), mm));
            vstoreu(row + j, e);
            acc = vadd(acc, e);
        }
        sum = vsum(acc);
#endif
        for (; j < vis; j++) {
            row[j] = expf(row[j] - m);
            sum += row[j];
        }
        const float inv = 1.0f / (sum + expf(sinks[g] - m));
        for (j = 0; j < vis; j++) row[j] *= inv;
        if (vis < n) memset(row + vis, 0, sizeof(float) * (n - vis));
    }
}
