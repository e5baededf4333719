/* Fused CPU kernel of nngraph_datasets.fit: K masked-Adam steps of many 2-32-32-1 SIRENs.
 *
 * Plain C (GCC / clang vector extensions, optional OpenMP), compiled on first use by
 * nngraph_datasets._fused and called through ctypes. The math is that of fit.siren_step (see the
 * docstring of fit.py); what differs is the schedule:
 *
 *   - one call runs up to K Adam steps of each INR; INRs are independent and run in parallel
 *     (OpenMP, one INR per task). Each INR is computed by one thread in a fixed order, so results
 *     are bit-identical for any thread count;
 *   - per step, the pixels are processed in tiles of TILE pixels, pixel-major (each pixel's 32
 *     activations are two 16-float vectors with AVX-512, four 8-float vectors otherwise), so
 *     every activation of a tile stays in L1 and the three 32x32 products (forward W1 h0,
 *     backward W1^T g1 and the weight gradient g1 h0^T) are register-blocked outer products with
 *     broadcast scalars: no horizontal sums except for the network output y (one
 *     transpose-reduction per VL pixels);
 *   - sine and cosine of an activation share one range reduction (x = j pi + r, |r| <= pi/2) and
 *     two short polynomials; |error| <= 1.5e-7 for |x| <= 200 (libm's sinf: 3e-8), <= 4e-7 for
 *     |x| below 4e6 (measured against double precision). Steps whose pre-activations
 *     could exceed that (bounded from the weights beforehand) and non-finite inputs take a
 *     checked path that calls libm's sinf / cosf for such lanes.
 *
 * No -ffast-math: it folds away the rounding trick of the range reduction ((t + M) - M), and the
 * early-stop test `mse > stop_mse` must see NaN as in torch (a NaN loss stops the INR).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define KERNEL_VERSION 1
#define H 32                        /* hidden width */
#define NP (H * H + 5 * H + 1)      /* parameters per INR (1185) */
#ifndef VL
#if defined(__AVX512F__)
#define VL 16                       /* floats per vector: 32 zmm registers */
#else
#define VL 8                        /* AVX2 (16 ymm registers), NEON, SSE: 8-float vectors */
#endif
#endif
#define NV (H / VL)                 /* vectors per pixel */
#ifndef TILE
#define TILE 16                     /* pixels per tile (a multiple of VL) */
#endif
#ifndef PB
#if VL == 16
#define PB 8                        /* pixels per register block (PB * NV accumulators) */
#else
#define PB 2
#endif
#endif
#ifndef IB
#define IB PB                       /* rows of dW1 per register block */
#endif
#define INLINE static inline __attribute__((always_inline))
/* |x| below which the vector sin/cos is accurate (|x| / pi < 2^22 for the rounding trick) */
#define SINCOS_LIMIT 4.0e6f

typedef float vf __attribute__((vector_size(4 * VL)));
typedef int32_t vi __attribute__((vector_size(4 * VL)));

#define LD(p) (*(const vf *)(p))
#define ST(p, v) (*(vf *)(p) = (v))

#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define SHUF(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUF(a, b, ...) __builtin_shuffle(a, b, (vi){__VA_ARGS__})
#endif

/* (not (vf){0} + s: with signed zeros that is a broadcast AND an add) */
#if VL == 16
INLINE vf splat(float s) { return (vf){s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s}; }
#else
INLINE vf splat(float s) { return (vf){s, s, s, s, s, s, s, s}; }
#endif

/* ------------------------------------------------------------------------------- sin & cos */
/* minimax on [-pi/2, pi/2]: sin r = r + r^3 (S1 + r^2 (S2 + r^2 (S3 + r^2 S4))), abs err 4.6e-9;
 * cos r = 1 + r^2 (C1 + ... + r^8 C5), abs err 2.4e-10 (before float32 rounding) */
#define S1 (-0.16666657098183588f)
#define S2 (0.008333017332702908f)
#define S3 (-0.00019806618172367097f)
#define S4 (2.60006133439712e-06f)
#define C1 (-0.4999999954963728f)
#define C2 (0.041666640731706166f)
#define C3 (-0.0013888403558793994f)
#define C4 (2.476188897143404e-05f)
#define C5 (-2.6077155305206563e-07f)
/* pi = PI_A + PI_B + PI_C (Cody-Waite with fused multiply-adds) */
#define PI_A 3.14159274101257324f
#define PI_B (-8.74227800037247891e-08f)
#define PI_C (-3.43877848488803694e-15f)
#define INV_PI 0.318309886183790672f
#define ROUND_MAGIC 12582912.0f /* 1.5 * 2^23: t = x/pi + MAGIC holds round(x/pi) in its low bits */

INLINE void sincos_v(vf x, vf *s, vf *c, const int checked) {
    vf t = x * INV_PI + ROUND_MAGIC;
    vf j = t - ROUND_MAGIC;
    vf r = x - j * PI_A;
    r = r - j * PI_B;
    r = r - j * PI_C;
    vf r2 = r * r;
    vf ps = ((S4 * r2 + S3) * r2 + S2) * r2 + S1;
    vf sn = (r * r2) * ps + r;
    vf cs = ((((C5 * r2 + C4) * r2 + C3) * r2 + C2) * r2 + C1) * r2 + 1.0f;
    vi sign = (vi)t << 31; /* (-1)^j */
    *s = (vf)((vi)sn ^ sign);
    *c = (vf)((vi)cs ^ sign);
    if (checked) {
        vf ax = (vf)((vi)x & 0x7fffffff);
        for (int l = 0; l < VL; l++) {
            if (!(ax[l] < SINCOS_LIMIT)) { /* large, inf or NaN */
                (*s)[l] = sinf(x[l]);
                (*c)[l] = cosf(x[l]);
            }
        }
    }
}

/* lane p of the result = sum of the VL lanes of y[p], for VL vectors y[0..VL-1] (a transpose
 * and add in log2(VL) rounds of shuffles, pixel order kept) */
#if VL == 16
INLINE vf red2(vf a, vf b) {
    return SHUF(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
           SHUF(a, b, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
}
INLINE vf red4(vf a, vf b) {
    return SHUF(a, b, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
           SHUF(a, b, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
}
INLINE vf red8(vf a, vf b) {
    return SHUF(a, b, 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
           SHUF(a, b, 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
}
INLINE vf red16(vf a, vf b) {
    return SHUF(a, b, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
           SHUF(a, b, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}
INLINE vf hsum_t(const float (*y)[VL]) {
    vf u[8], w[4], z[2];
    for (int i = 0; i < 8; i++) u[i] = red2(LD(y[2 * i]), LD(y[2 * i + 1]));
    for (int i = 0; i < 4; i++) w[i] = red4(u[2 * i], u[2 * i + 1]);
    for (int i = 0; i < 2; i++) z[i] = red8(w[2 * i], w[2 * i + 1]);
    return red16(z[0], z[1]);
}
#else
INLINE vf red2(vf a, vf b) {
    return SHUF(a, b, 0, 1, 2, 3, 8, 9, 10, 11) + SHUF(a, b, 4, 5, 6, 7, 12, 13, 14, 15);
}
INLINE vf red4(vf a, vf b) {
    return SHUF(a, b, 0, 1, 4, 5, 8, 9, 12, 13) + SHUF(a, b, 2, 3, 6, 7, 10, 11, 14, 15);
}
INLINE vf red8(vf a, vf b) {
    return SHUF(a, b, 0, 2, 4, 6, 8, 10, 12, 14) + SHUF(a, b, 1, 3, 5, 7, 9, 11, 13, 15);
}
INLINE vf hsum_t(const float (*y)[VL]) {
    vf u[4], w[2];
    for (int i = 0; i < 4; i++) u[i] = red2(LD(y[2 * i]), LD(y[2 * i + 1]));
    for (int i = 0; i < 2; i++) w[i] = red4(u[2 * i], u[2 * i + 1]);
    return red8(w[0], w[1]);
}
#endif
INLINE float hsum(vf v) {
    float s = 0.0f;
    for (int l = 0; l < VL; l++) s += v[l];
    return s;
}

/* ------------------------------------------------------------------------------- workspace */
typedef struct {
    /* weights of the current step (w0 folded in where the forward needs it) */
    float W1T[H][H]; /* w0 * W1^T: W1T[k][i] = w0 W1[i][k] */
    float W1[H][H];  /* W1[i][k] */
    float wx[H], wy[H], b0[H], b1[H], w2[H], w2s[H]; /* w0 W0[:,0], w0 W0[:,1], w0 b0, w0 b1, W2, w0 W2 */
    /* gradient accumulators (w0 factors of the first layer applied at the end) */
    float gW1[H][H];
    float gx[H], gy[H], gb0[H], gb1[H], gw2[H];
    /* one tile of activations, pixel-major */
    float h0[TILE][H], c0[TILE][H], h1[TILE][H], c1[TILE][H], g1[TILE][H];
    float yv[TILE][VL];
    float dy[TILE];
    float grad[NP + VL];
} ws_t;

/* ------------------------------------------------------------------------------- one tile */
INLINE void tile(
    ws_t *restrict w, const float *restrict xs, const float *restrict ys, const float *restrict ts,
    const int32_t *restrict valid, float dscale, float b2c, vf *mse_acc, vf *db2_acc, const int checked) {
    /* layer 0: a0 = w0 (W0 x + b0), h0 = sin a0, c0 = cos a0 */
    for (int p = 0; p < TILE; p++) {
        vf xp = splat(xs[p]), yp = splat(ys[p]);
        for (int v = 0; v < NV; v++) {
            vf a = LD(w->wx + v * VL) * xp + LD(w->wy + v * VL) * yp + LD(w->b0 + v * VL);
            vf s, c;
            sincos_v(a, &s, &c, checked);
            ST(&w->h0[p][v * VL], s);
            ST(&w->c0[p][v * VL], c);
        }
    }
    /* layer 1: a1 = w0 (W1 h0 + b1) as outer products over k; h1, c1; y partial sums */
    for (int pb = 0; pb < TILE; pb += PB) {
        vf acc[PB][NV];
        for (int p = 0; p < PB; p++)
            for (int v = 0; v < NV; v++) acc[p][v] = LD(w->b1 + v * VL);
        for (int k = 0; k < H; k++) {
            vf wk[NV];
            for (int v = 0; v < NV; v++) wk[v] = LD(&w->W1T[k][v * VL]);
            for (int p = 0; p < PB; p++) {
                vf hp = splat(w->h0[pb + p][k]);
                for (int v = 0; v < NV; v++) acc[p][v] += hp * wk[v];
            }
        }
        for (int p = 0; p < PB; p++) {
            vf yacc = splat(0.0f);
            for (int v = 0; v < NV; v++) {
                vf s, c;
                sincos_v(acc[p][v], &s, &c, checked);
                ST(&w->h1[pb + p][v * VL], s);
                ST(&w->c1[pb + p][v * VL], c);
                yacc += s * LD(w->w2 + v * VL);
            }
            ST(w->yv[pb + p], yacc);
        }
    }
    /* output, residual (0 on padding pixels), loss, dy = 2 r / N */
    for (int q = 0; q < TILE; q += VL) {
        vf y = hsum_t((const float (*)[VL])w->yv[q]) + b2c;
        vf r = y - LD(ts + q);
        r = (vf)((vi)r & *(const vi *)(valid + q));
        *mse_acc += r * r;
        vf d = r * dscale;
        *db2_acc += d;
        ST(w->dy + q, d);
    }
    /* g1s = w0 g1 = cos(a1) * (w0 W2) * dy; dW2 += dy h1; db1 += g1s */
    {
        vf aw2[NV], ab1[NV], w2s[NV];
        for (int v = 0; v < NV; v++) {
            aw2[v] = LD(w->gw2 + v * VL);
            ab1[v] = LD(w->gb1 + v * VL);
            w2s[v] = LD(w->w2s + v * VL);
        }
        for (int p = 0; p < TILE; p++) {
            vf d = splat(w->dy[p]);
            for (int v = 0; v < NV; v++) {
                aw2[v] += LD(&w->h1[p][v * VL]) * d;
                vf g = LD(&w->c1[p][v * VL]) * (w2s[v] * d);
                ab1[v] += g;
                ST(&w->g1[p][v * VL], g);
            }
        }
        for (int v = 0; v < NV; v++) {
            ST(w->gw2 + v * VL, aw2[v]);
            ST(w->gb1 + v * VL, ab1[v]);
        }
    }
    /* dW1 += g1s h0^T: row i of dW1 accumulates g1s[p][i] * h0[p] */
    for (int ib = 0; ib < H; ib += IB) {
        vf acc[IB][NV];
        for (int i = 0; i < IB; i++)
            for (int v = 0; v < NV; v++) acc[i][v] = LD(&w->gW1[ib + i][v * VL]);
        for (int p = 0; p < TILE; p++) {
            vf hv[NV];
            for (int v = 0; v < NV; v++) hv[v] = LD(&w->h0[p][v * VL]);
            for (int i = 0; i < IB; i++) {
                vf g = splat(w->g1[p][ib + i]);
                for (int v = 0; v < NV; v++) acc[i][v] += g * hv[v];
            }
        }
        for (int i = 0; i < IB; i++)
            for (int v = 0; v < NV; v++) ST(&w->gW1[ib + i][v * VL], acc[i][v]);
    }
    /* g0 / w0 = cos(a0) * (W1^T g1s); dW0 / w0 += g0 x^T; db0 / w0 += g0 */
    {
        vf ax[NV], ay[NV], ab[NV];
        for (int v = 0; v < NV; v++) {
            ax[v] = LD(w->gx + v * VL);
            ay[v] = LD(w->gy + v * VL);
            ab[v] = LD(w->gb0 + v * VL);
        }
        for (int pb = 0; pb < TILE; pb += PB) {
            vf acc[PB][NV];
            for (int p = 0; p < PB; p++)
                for (int v = 0; v < NV; v++) acc[p][v] = splat(0.0f);
            for (int i = 0; i < H; i++) {
                vf wi[NV];
                for (int v = 0; v < NV; v++) wi[v] = LD(&w->W1[i][v * VL]);
                for (int p = 0; p < PB; p++) {
                    vf g = splat(w->g1[pb + p][i]);
                    for (int v = 0; v < NV; v++) acc[p][v] += g * wi[v];
                }
            }
            for (int p = 0; p < PB; p++) {
                vf xp = splat(xs[pb + p]), yp = splat(ys[pb + p]);
                for (int v = 0; v < NV; v++) {
                    vf g0 = acc[p][v] * LD(&w->c0[pb + p][v * VL]);
                    ax[v] += g0 * xp;
                    ay[v] += g0 * yp;
                    ab[v] += g0;
                }
            }
        }
        for (int v = 0; v < NV; v++) {
            ST(w->gx + v * VL, ax[v]);
            ST(w->gy + v * VL, ay[v]);
            ST(w->gb0 + v * VL, ab[v]);
        }
    }
}

/* loss and gradient of one INR at the weights in w; returns the mse */
INLINE float loss_grad(
    ws_t *restrict w, int ntiles, int n, const float *xs, const float *ys, const float *ts,
    const int32_t *valid, float b2, float w0, const int checked) {
    memset(w->gW1, 0, sizeof w->gW1);
    memset(w->gx, 0, sizeof w->gx);
    memset(w->gy, 0, sizeof w->gy);
    memset(w->gb0, 0, sizeof w->gb0);
    memset(w->gb1, 0, sizeof w->gb1);
    memset(w->gw2, 0, sizeof w->gw2);
    vf mse_acc = splat(0.0f), db2_acc = splat(0.0f);
    float dscale = 2.0f / (float)n;
    float b2c = b2 + 0.5f;
    for (int t = 0; t < ntiles; t++) {
        int o = t * TILE;
        tile(w, xs + o, ys + o, ts + o, valid + o, dscale, b2c, &mse_acc, &db2_acc, checked);
    }
    float *g = w->grad;
    for (int j = 0; j < H; j++) {
        g[2 * j] = w0 * w->gx[j];
        g[2 * j + 1] = w0 * w->gy[j];
        g[2 * H + j] = w0 * w->gb0[j];
    }
    memcpy(g + 3 * H, w->gW1, sizeof w->gW1);
    memcpy(g + 3 * H + H * H, w->gb1, sizeof w->gb1);
    memcpy(g + 4 * H + H * H, w->gw2, sizeof w->gw2);
    g[5 * H + H * H] = hsum(db2_acc);
    return hsum(mse_acc) / (float)n;
}

/* the step's weights from the flat parameters (state-dict order) */
static void load_weights(ws_t *restrict w, const float *restrict prm, float w0) {
    for (int j = 0; j < H; j++) {
        w->wx[j] = w0 * prm[2 * j];
        w->wy[j] = w0 * prm[2 * j + 1];
        w->b0[j] = w0 * prm[2 * H + j];
    }
    const float *W1 = prm + 3 * H;
    for (int i = 0; i < H; i++)
        for (int k = 0; k < H; k++) {
            w->W1[i][k] = W1[i * H + k];
            w->W1T[k][i] = w0 * W1[i * H + k];
        }
    for (int i = 0; i < H; i++) {
        w->b1[i] = w0 * prm[3 * H + H * H + i];
        w->w2[i] = prm[4 * H + H * H + i];
        w->w2s[i] = w0 * w->w2[i];
    }
}

/* bound on |pre-activation| over the step; below SINCOS_LIMIT the unchecked sin/cos is exact
 * enough (NaN parameters give a NaN bound, hence the checked path) */
static float act_bound(const ws_t *w, float max_x, float max_y) {
    float b0 = 0.0f, b1 = 0.0f;
    for (int j = 0; j < H; j++) {
        float a = fabsf(w->wx[j]) * max_x + fabsf(w->wy[j]) * max_y + fabsf(w->b0[j]);
        b0 = (a > b0 || a != a) ? a : b0;
    }
    for (int i = 0; i < H; i++) {
        float a = fabsf(w->b1[i]);
        for (int k = 0; k < H; k++) a += 1.001f * fabsf(w->W1T[k][i]);
        b1 = (a > b1 || a != a) ? a : b1;
    }
    return (b1 > b0 || b1 != b1) ? b1 : b0;
}

static int fit_one(float *restrict prm, float *restrict m, float *restrict v, int32_t *step,
                    uint8_t *active, const float *restrict target, const float *restrict coords,
                    int n, int k_steps, float lr, float beta1, float beta2, float omb1,
                    float omb2, float eps, float stop_mse, float w0, float *mse_out) {
    if (!*active || k_steps <= 0) return 0;
    int ntiles = (n + TILE - 1) / TILE, npad = ntiles * TILE;
    ws_t *w = NULL;
    float *buf = NULL;
    if (posix_memalign((void **)&w, 64, sizeof(ws_t)) != 0) return -1;
    if (posix_memalign((void **)&buf, 64, (size_t)npad * 4 * sizeof(float)) != 0) {
        free(w);
        return -1;
    }
    float *xs = buf, *ys = buf + npad, *ts = buf + 2 * npad;
    int32_t *valid = (int32_t *)(buf + 3 * npad);
    float max_x = 0.0f, max_y = 0.0f;
    for (int p = 0; p < npad; p++) {
        int in = p < n;
        xs[p] = in ? coords[p] : 0.0f;
        ys[p] = in ? coords[n + p] : 0.0f;
        ts[p] = in ? target[p] : 0.0f;
        valid[p] = in ? -1 : 0;
        float ax = fabsf(xs[p]), ay = fabsf(ys[p]);
        max_x = (ax > max_x || ax != ax) ? ax : max_x;
        max_y = (ay > max_y || ay != ay) ? ay : max_y;
    }
    for (int s = 0; s < k_steps; s++) {
        load_weights(w, prm, w0);
        float b2 = prm[NP - 1];
        float mse;
        if (act_bound(w, max_x, max_y) < SINCOS_LIMIT)
            mse = loss_grad(w, ntiles, n, xs, ys, ts, valid, b2, w0, 0);
        else
            mse = loss_grad(w, ntiles, n, xs, ys, ts, valid, b2, w0, 1);
        *mse_out = mse;
        if (!(mse > stop_mse)) { /* reached the target (or NaN): frozen from now on */
            *active = 0;
            break;
        }
        /* masked_adam of fit.py */
        int st = ++*step;
        float bc1 = 1.0f - powf(beta1, (float)st);
        float sqrt_bc2 = sqrtf(1.0f - powf(beta2, (float)st));
        float step_size = lr / bc1;
        const float *g = w->grad;
        for (int q = 0; q < NP; q++) {
            float gq = g[q];
            float mq = m[q] + (gq - m[q]) * omb1;
            float vq = v[q] * beta2 + gq * gq * omb2;
            float denom = sqrtf(vq) / sqrt_bc2 + eps;
            m[q] = mq;
            v[q] = vq;
            prm[q] = prm[q] - step_size * mq / denom;
        }
    }
    free(buf);
    free(w);
    return 0;
}

/* ------------------------------------------------------------------------------- entry points */
int siren_kernel_version(void) { return KERNEL_VERSION; }
int siren_kernel_hidden(void) { return H; }
int siren_kernel_tile(void) { return TILE; }
int siren_kernel_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* K masked-Adam steps of B INRs, in place.
 *   params, exp_avg, exp_avg_sq: [B, 1185] float32 (row stride 1185)
 *   steps: [B] int32 Adam steps taken; active: [B] uint8 (0 = stopped, never updated again)
 *   target: [B, n] pixels; coords_t: [2, n] coordinates
 *   mse_out: [B] the last loss computed in this call: before the last step taken, or the one
 *            that stopped the INR (unchanged for INRs inactive from the start)
 * Returns 0, -1 on bad arguments, -2 if memory ran out (some INRs then took no step). */
int siren_fit(int64_t b, int64_t n, int64_t k_steps, float *params, float *exp_avg,
              float *exp_avg_sq, int32_t *steps, uint8_t *active, const float *target,
              const float *coords_t, double lr, double beta1, double beta2, double eps,
              double stop_mse, double w0, float *mse_out, int nthreads) {
    if (b < 0 || n <= 0 || n > (1 << 24) || k_steps < 0) return -1;
    int64_t i;
    int err = 0;
    (void)nthreads;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads > 0 ? nthreads : 1) if (nthreads > 1 && b > 1)
#endif
    for (i = 0; i < b; i++) {
        int rc = fit_one(params + i * NP, exp_avg + i * NP, exp_avg_sq + i * NP, steps + i, active + i,
                target + i * n, coords_t, (int)n, (int)k_steps, (float)lr, (float)beta1,
                (float)beta2, (float)(1.0 - beta1), (float)(1.0 - beta2), (float)eps,
                (float)stop_mse, (float)w0, mse_out + i);
        if (rc != 0) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            err = rc;
        }
    }
    return err ? -2 : 0;
}
