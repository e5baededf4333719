/* Fused CPU kernels of the dense NG-GNN layer (nngraph_layers.edge_pna) and of NG-T's block path
 * (nngraph_layers.relational_attention, rt_layer): the "native" kernels.
 *
 * Plain C (optional OpenMP; GCC / Clang vector extensions for the small GEMMs), compiled on first
 * use by nngraph_layers._native and called through ctypes from autograd functions. float32,
 * contiguous inputs. Each computes the math of the torch code it replaces in one pass over the
 * per-edge (per-pair) rows forward and one backward, instead of the ~20-25 torch operations and
 * their memory traffic; the small per-edge GEMMs (K = d_e = 32) run inside, a block of rows at a
 * time in cache-resident buffers, so their outputs never go to memory, and the backward
 * recomputes them instead of storing them.
 *
 *   NG-GNN message statistics (ngnn_msg_fwd / ngnn_msg_bwd), per graph b, direction r in
 *   {0, 1}, target o, source i, channel c, with G = E Wf^T the FiLM GEMM (gamma | beta) and C
 *   its bias:
 *       s = To[b,r,o,c] + Ti[b,r,i,c]
 *       m = (beta[b,r,o,i,c] + C[d+c]) + (gamma[b,r,o,i,c] + C[c]) * s
 *     direction 0 (forward edges i -> o) is reduced over i into So[b,o,:,c], direction 1
 *     (reverse edges o -> i) over o into Si[b,i,:,c]; the four statistics are the sum, the sum of
 *     squares, the min and the max, with the index of the min / max kept for the backward (the
 *     gradient of a min / max goes to its first occurrence; torch splits it among exact ties);
 *
 *   NG-GNN edge update (ngnn_edge_fwd / ngnn_edge_bwd):
 *       out = E + silu(E We^T + To[b,r,o] + Ti[b,r,i]) Wo^T + bo
 *     with the exponential of the sigmoid computed by a polynomial (relative error ~2e-7)
 *     so that the loop vectorises;
 *
 *   NG-T: relational attention (ngt_attn_fwd / _bwd), the edge-update GELU of both directions
 *   (ngt_edge_fwd / _bwd) and residual + dropout + LayerNorm (res_ln_fwd / _bwd), each described
 *   at its code.
 *
 * Graphs are independent and run in parallel (OpenMP over b); each graph is computed by one
 * thread in a fixed order, and weight gradients are returned per graph (or per row block) and
 * summed by the caller, so results do not depend on the thread count.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define KERNEL_VERSION 9
#define RESTRICT __restrict__
#define NOINLINE __attribute__((noinline))
/* the channel loops write only through restrict pointers; this tells compilers that give up on
 * proving it themselves (GCC 12 on msg_row_bwd: too many data streams) */
#if defined(__clang__)
#define IVDEP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define IVDEP _Pragma("GCC ivdep")
#else
#define IVDEP
#endif
/* a sum the compiler may split into vector lanes (reassociation, for these loops only; a build
 * without OpenMP ignores it and sums in order) */
#define PRAGMA_(x) _Pragma(#x)
#define SIMD_SUM(v) PRAGMA_(omp simd reduction(+ : v))

int ngnn_kernel_version(void) { return KERNEL_VERSION; }

int ngnn_kernel_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* ---- message statistics ------------------------------------------------------------------ */

/* Statistics [4, d] (sum, sum of squares, min, max) and their arguments [2, d] (argmin, argmax)
 * of one receiving node before its first message. */
static inline void stats_init(int64_t d, float *RESTRICT st, int32_t *RESTRICT ix) {
    for (int64_t c = 0; c < d; c++) {
        st[c] = 0.0f;
        st[d + c] = 0.0f;
        st[2 * d + c] = INFINITY;
        st[3 * d + c] = -INFINITY;
        ix[c] = 0;
        ix[d + c] = 0;
    }
}

/* One message m = (beta + cb) + (gamma + cg) * (t + u), from the FiLM row g and the node terms
 * t, u, added into the statistics of its receiving node; `me` is the sending node's index. The
 * same code serves both directions (and graphs): only the pointers differ. */
static inline __attribute__((always_inline)) void msg_row_fwd(
    int64_t d, const float *RESTRICT g, const float *RESTRICT cg, const float *RESTRICT cb,
    const float *RESTRICT t, const float *RESTRICT u, float *RESTRICT st, int32_t *RESTRICT ix,
    int32_t me) {
    IVDEP
    for (int64_t c = 0; c < d; c++) {
        float m = (g[d + c] + cb[c]) + (g[c] + cg[c]) * (t[c] + u[c]);
        st[c] += m;
        st[d + c] += m * m;
        int lo = m < st[2 * d + c], hi = m > st[3 * d + c];
        st[2 * d + c] = lo ? m : st[2 * d + c];
        ix[c] = lo ? me : ix[c];
        st[3 * d + c] = hi ? m : st[3 * d + c];
        ix[d + c] = hi ? me : ix[d + c];
    }
}

/* The backward of msg_row_fwd: the gradient dm of the message (sum, sum of squares, and the
 * min / max where `me` is their argument) -> its FiLM row's gradient dg, the bias gradient
 * (dcg, dcb) and the node-term gradients (dt, du), the last four accumulated. */
static inline __attribute__((always_inline)) void msg_row_bwd(
    int64_t d, const float *RESTRICT g, const float *RESTRICT cg, const float *RESTRICT cb,
    const float *RESTRICT t, const float *RESTRICT u, const float *RESTRICT ds,
    const int32_t *RESTRICT ix, int32_t me, float *RESTRICT dg, float *RESTRICT dcg,
    float *RESTRICT dcb, float *RESTRICT dt, float *RESTRICT du) {
    IVDEP
    for (int64_t c = 0; c < d; c++) {
        float s = t[c] + u[c], gam = g[c] + cg[c];
        float m = (g[d + c] + cb[c]) + gam * s;
        float dm = ds[c] + 2.0f * ds[d + c] * m + (ix[c] == me ? ds[2 * d + c] : 0.0f) +
                   (ix[d + c] == me ? ds[3 * d + c] : 0.0f);
        dg[c] = dm * s;
        dg[d + c] = dm;
        dcg[c] += dm * s;
        dcb[c] += dm;
        float dx = dm * gam;
        dt[c] += dx;
        du[c] += dx;
    }
}

/* ---- polynomial exponential -------------------------------------------------------------- */

/* exp(x) for x in [-87, 88] (clamped), relative error ~2e-7: x = k ln2 + r, |r| <= ln2 / 2 (+1 ulp),
 * exp(r) by a degree-6 Taylor polynomial, 2^k assembled in the exponent bits. NaN stays NaN. */
static inline float exp_poly(float x) {
    float xc = x > 88.0f ? 88.0f : (x < -87.0f ? -87.0f : x);
    xc = x != x ? x : xc;
    /* k = round(x / ln2) by the 1.5 * 2^23 trick (floorf would keep the loop scalar) */
    float k = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = xc - k * 0.693359375f;  /* ln2 split in two for an exact k * ln2_hi */
    r = r + k * 2.12194440e-4f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union { int32_t i; float f; } scale = {.i = ((int32_t)k + 127) << 23};
    return p * scale.f;
}

/* ---- NG-T relational attention over the real edges (block path) -------------------------- */

/* One parameterised layer of an MLP graph: the n_o x n_i complete bipartite block between the
 * source node layer (nodes src_off..src_off+n_i of each graph) and the target layer
 * (dst_off..dst_off+n_o), with pairs in both directions: direction 0 (u -> w along the weight,
 * receivers the targets) and direction 1 (w -> u, receivers the sources). Inputs, per graph b:
 *   E   [B,2,n_o,n_i,de]  the pair features;
 *   Wt  [de,3A]           the transposed pair weights (q_e | k_e | m_e), W [3A,de] the same;
 *   QKV [B,N,3A]          the node terms (q | k | v) of all nodes.
 * For a receiver r and each sender s of its block, with the pair terms P = W e (computed here,
 * a receiver's rows at a time, in a cache-resident buffer: the [B,2,n_o,n_i,3A] tensor of pair
 * terms never goes to memory, which is what bounded the step when torch produced it), per
 * head h (width dh = A / H):
 *   score_h = scale * sum_{t in h} (q_r + q_e)_t (k_s + k_e)_t,   p_h = exp(score_h - mx_h)
 * with mx_h the receiver's maximum score in this block, and the outputs are the block's partial
 * softmax sums (merged over the receiver's blocks by the caller):
 *   mx [H], den [H] = sum_s p_h, num [A] = sum_s p_h (v_s * m_e)_t, es [H,de] = sum_s p_h e.
 * Each pair's p is kept (S [B,2,n_o,n_i,H]) for the backward, which recomputes P. The same
 * receiver code serves both directions: a receiver's pair rows are gathered first (direction 0:
 * consecutive rows; direction 1: every n_i-th row). */

/* 16 floats; unaligned loads and stores (GCC / Clang vector extension: AVX-512 registers with
 * -march=native on such CPUs, pairs of AVX2 registers or quadruples of SSE ones elsewhere) */
typedef float vf16 __attribute__((vector_size(64), aligned(4), may_alias));
#define VL(p) (*(const vf16 *)(p))
#define VS(p, v) (*(vf16 *)(p) = (v))

/* O[j, 0:M] = sum_c X[j, c] Wt[c, 0:M] for the n rows of X [n, K]: blocks of 64 columns (their
 * K x 64 slice of Wt, 8 KB for K = 32, stays in L1 while every row passes), four rows at a time
 * (16 accumulators in registers). */
static void rows_times_wt(int64_t n, int64_t K, int64_t M, const float *RESTRICT X,
                          const float *RESTRICT Wt, float *RESTRICT O) {
    int64_t m = 0;
    for (; m + 64 <= M; m += 64) {
        int64_t j = 0;
        for (; j + 4 <= n; j += 4) {
            vf16 a[4][4];
            for (int r = 0; r < 4; r++)
                for (int v = 0; v < 4; v++) a[r][v] = (vf16){0};
            for (int64_t c = 0; c < K; c++) {
                const float *w = Wt + c * M + m;
                vf16 wv[4];
                for (int v = 0; v < 4; v++) wv[v] = VL(w + 16 * v);
                for (int r = 0; r < 4; r++) {
                    const float x = X[(j + r) * K + c];
                    for (int v = 0; v < 4; v++) a[r][v] += x * wv[v];
                }
            }
            for (int r = 0; r < 4; r++)
                for (int v = 0; v < 4; v++) VS(O + (j + r) * M + m + 16 * v, a[r][v]);
        }
        for (; j < n; j++) {
            vf16 a[4];
            for (int v = 0; v < 4; v++) a[v] = (vf16){0};
            for (int64_t c = 0; c < K; c++) {
                const float x = X[j * K + c];
                for (int v = 0; v < 4; v++) a[v] += x * VL(Wt + c * M + m + 16 * v);
            }
            for (int v = 0; v < 4; v++) VS(O + j * M + m + 16 * v, a[v]);
        }
    }
    for (; m + 32 <= M; m += 32) { /* 32 columns: eight rows at a time */
        int64_t j = 0;
        for (; j + 8 <= n; j += 8) {
            vf16 a[8][2];
            for (int r = 0; r < 8; r++) a[r][0] = a[r][1] = (vf16){0};
            for (int64_t c = 0; c < K; c++) {
                const vf16 w0 = VL(Wt + c * M + m), w1 = VL(Wt + c * M + m + 16);
                for (int r = 0; r < 8; r++) {
                    const float x = X[(j + r) * K + c];
                    a[r][0] += x * w0;
                    a[r][1] += x * w1;
                }
            }
            for (int r = 0; r < 8; r++) {
                VS(O + (j + r) * M + m, a[r][0]);
                VS(O + (j + r) * M + m + 16, a[r][1]);
            }
        }
        for (; j < n; j++) {
            vf16 a0 = (vf16){0}, a1 = (vf16){0};
            for (int64_t c = 0; c < K; c++) {
                const float x = X[j * K + c];
                a0 += x * VL(Wt + c * M + m);
                a1 += x * VL(Wt + c * M + m + 16);
            }
            VS(O + j * M + m, a0);
            VS(O + j * M + m + 16, a1);
        }
    }
    for (; m < M; m++) {
        for (int64_t j = 0; j < n; j++) {
            float s = 0.0f;
            for (int64_t c = 0; c < K; c++) s += X[j * K + c] * Wt[c * M + m];
            O[j * M + m] = s;
        }
    }
}

/* Out[p, 0:K] += sum_q S[p * sp + q * sq] Y[q, 0:K] for p < np, q < nq (Y [nq, K]): the two
 * backward GEMMs of the per-edge layers are this product with different strides. Eight rows of
 * Out at a time share the loads of Y (16 accumulators for K = 32). */
static void strided_rows_times(int64_t np, int64_t nq, int64_t K, const float *RESTRICT S,
                               int64_t sp, int64_t sq, const float *RESTRICT Y,
                               float *RESTRICT Out) {
    int64_t p = 0;
    if (K == 32) {
        for (; p + 8 <= np; p += 8) {
            vf16 a[8][2];
            for (int r = 0; r < 8; r++) {
                a[r][0] = VL(Out + (p + r) * K);
                a[r][1] = VL(Out + (p + r) * K + 16);
            }
            for (int64_t q = 0; q < nq; q++) {
                const vf16 y0 = VL(Y + q * K), y1 = VL(Y + q * K + 16);
                for (int r = 0; r < 8; r++) {
                    const float s = S[(p + r) * sp + q * sq];
                    a[r][0] += s * y0;
                    a[r][1] += s * y1;
                }
            }
            for (int r = 0; r < 8; r++) {
                VS(Out + (p + r) * K, a[r][0]);
                VS(Out + (p + r) * K + 16, a[r][1]);
            }
        }
    }
    for (; p < np; p++) {
        float *RESTRICT out = Out + p * K;
        for (int64_t q = 0; q < nq; q++) {
            const float s = S[p * sp + q * sq];
            const float *RESTRICT y = Y + q * K;
            IVDEP
            for (int64_t c = 0; c < K; c++) out[c] += s * y[c];
        }
    }
}

/* D[j, 0:K] += sum_d G[j, d] W[d, 0:K] for the n rows of G [n, M] (W [M, K]). */
static inline void rows_times_w(int64_t n, int64_t M, int64_t K, const float *RESTRICT G,
                                const float *RESTRICT W, float *RESTRICT D) {
    strided_rows_times(n, M, K, G, M, 1, W, D);
}

/* Acc[d, 0:K] += sum_j G[j, d] X[j, 0:K] (the weight gradient; G [n, M], X [n, K]). */
static inline void accumulate_gt_x(int64_t n, int64_t M, int64_t K, const float *RESTRICT G,
                                   const float *RESTRICT X, float *RESTRICT Acc) {
    strided_rows_times(M, n, K, G, 1, M, X, Acc);
}

/* the ns pair rows of a receiver: rows row0 + j * rstride of E, gathered into Eb [ns, de] */
static inline void gather_rows(int64_t ns, int64_t de, const float *RESTRICT E, int64_t row0,
                               int64_t rstride, float *RESTRICT Eb) {
    for (int64_t j = 0; j < ns; j++)
        memcpy(Eb + j * de, E + (row0 + j * rstride) * de, sizeof(float) * (size_t)de);
}

/* Forward of one receiver from its gathered pair rows Eb and pair terms Pb (see above). */
static inline __attribute__((always_inline)) void attn_recv_fwd(
    int64_t A, int64_t H, int64_t de, float scale, int64_t ns, const float *RESTRICT Pb,
    const float *RESTRICT Eb, float *RESTRICT S, int64_t row0, int64_t rstride,
    const float *RESTRICT q, const float *RESTRICT kv, float *RESTRICT tmp, float *RESTRICT mx,
    float *RESTRICT den, float *RESTRICT num, float *RESTRICT es) {
    const int64_t dh = A / H, A3 = 3 * A;
    for (int64_t h = 0; h < H; h++) mx[h] = -INFINITY;
    for (int64_t j = 0; j < ns; j++) {
        const float *RESTRICT pr = Pb + j * A3;
        const float *RESTRICT kj = kv + j * A3;
        float *RESTRICT s = S + (row0 + j * rstride) * H;
        for (int64_t d = 0; d < A; d++) tmp[d] = (q[d] + pr[d]) * (kj[d] + pr[A + d]);
        for (int64_t h = 0; h < H; h++) {
            float acc = 0.0f;
            SIMD_SUM(acc)
            for (int64_t t = 0; t < dh; t++) acc += tmp[h * dh + t];
            acc *= scale;
            s[h] = acc;
            mx[h] = acc > mx[h] ? acc : mx[h];
        }
    }
    for (int64_t h = 0; h < H; h++) den[h] = 0.0f;
    for (int64_t d = 0; d < A; d++) num[d] = 0.0f;
    for (int64_t c = 0; c < H * de; c++) es[c] = 0.0f;
    for (int64_t j = 0; j < ns; j++) {
        const float *RESTRICT pr = Pb + j * A3 + 2 * A;
        const float *RESTRICT er = Eb + j * de;
        const float *RESTRICT vj = kv + j * A3 + A;
        float *RESTRICT s = S + (row0 + j * rstride) * H;
        IVDEP
        for (int64_t h = 0; h < H; h++) s[h] = exp_poly(s[h] - mx[h]); /* kept for the backward */
        for (int64_t h = 0; h < H; h++) {
            const float p = s[h];
            den[h] += p;
            IVDEP
            for (int64_t t = 0; t < dh; t++) num[h * dh + t] += p * (vj[h * dh + t] * pr[h * dh + t]);
            IVDEP
            for (int64_t c = 0; c < de; c++) es[h * de + c] += p * er[c];
        }
    }
}

/* per-thread scratch: Eb [n, de], Pb [n, 3A], dPb [n, 3A], dEb [n, de], and 3 rows of A */
typedef struct {
    float *eb, *pb, *dpb, *deb, *tmp;
} attn_scratch;

static int attn_scratch_alloc(attn_scratch *s, int64_t n, int64_t A, int64_t de) {
    size_t total = (size_t)(2 * n * de + 2 * n * 3 * A + 3 * A);
    float *m = (float *)malloc(sizeof(float) * total);
    s->eb = m;
    if (!m) return 0;
    s->deb = m + n * de;
    s->pb = s->deb + n * de;
    s->dpb = s->pb + n * 3 * A;
    s->tmp = s->dpb + n * 3 * A;
    return 1;
}

static NOINLINE void attn_fwd_one(int64_t b, int64_t N, int64_t no, int64_t ni, int64_t src_off,
                                  int64_t dst_off, int64_t A, int64_t H, int64_t de, float scale,
                                  const float *RESTRICT E, const float *RESTRICT Wt,
                                  const float *RESTRICT QKV, float *RESTRICT S,
                                  float *RESTRICT mx_o, float *RESTRICT den_o,
                                  float *RESTRICT num_o, float *RESTRICT es_o,
                                  float *RESTRICT mx_i, float *RESTRICT den_i,
                                  float *RESTRICT num_i, float *RESTRICT es_i,
                                  const attn_scratch *sc) {
    const int64_t A3 = 3 * A;
    const float *node = QKV + b * N * A3;
    for (int64_t o = 0; o < no; o++) { /* direction 0: target o receives from sources i */
        const int64_t r = b * no + o, row0 = (b * 2 * no + o) * ni;
        gather_rows(ni, de, E, row0, 1, sc->eb);
        rows_times_wt(ni, de, A3, sc->eb, Wt, sc->pb);
        attn_recv_fwd(A, H, de, scale, ni, sc->pb, sc->eb, S, row0, 1, node + (dst_off + o) * A3,
                      node + src_off * A3 + A, sc->tmp, mx_o + r * H, den_o + r * H,
                      num_o + r * A, es_o + r * H * de);
    }
    for (int64_t i = 0; i < ni; i++) { /* direction 1: source i receives from targets o */
        const int64_t r = b * ni + i, row0 = (b * 2 + 1) * no * ni + i;
        gather_rows(no, de, E, row0, ni, sc->eb);
        rows_times_wt(no, de, A3, sc->eb, Wt, sc->pb);
        attn_recv_fwd(A, H, de, scale, no, sc->pb, sc->eb, S, row0, ni,
                      node + (src_off + i) * A3, node + dst_off * A3 + A, sc->tmp, mx_i + r * H,
                      den_i + r * H, num_i + r * A, es_i + r * H * de);
    }
}

/* E [B,2,no,ni,de], Wt [de,3A], QKV [B,N,3A] -> S [B,2,no,ni,H] the pairs' p (for the
 * backward) and per target (o) and per source (i): mx, den [B,n,H], num [B,n,A],
 * es [B,n,H,de]. Returns 0, or -1 when scratch memory ran out. */
int ngt_attn_fwd(int threads, int64_t B, int64_t N, int64_t no, int64_t ni, int64_t src_off,
                 int64_t dst_off, int64_t A, int64_t H, int64_t de, float scale,
                 const float *RESTRICT E, const float *RESTRICT Wt, const float *RESTRICT QKV,
                 float *RESTRICT S, float *RESTRICT mx_o, float *RESTRICT den_o,
                 float *RESTRICT num_o, float *RESTRICT es_o, float *RESTRICT mx_i,
                 float *RESTRICT den_i, float *RESTRICT num_i, float *RESTRICT es_i) {
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        attn_scratch sc;
        const int ok = attn_scratch_alloc(&sc, no > ni ? no : ni, A, de);
        /* every thread reaches the loop (its barrier); one without scratch only reports */
#pragma omp for schedule(static)
        for (int64_t b = 0; b < B; b++) {
            if (ok)
                attn_fwd_one(b, N, no, ni, src_off, dst_off, A, H, de, scale, E, Wt, QKV, S,
                             mx_o, den_o, num_o, es_o, mx_i, den_i, num_i, es_i, &sc);
            else
                failed = 1;
        }
        free(sc.eb);
    }
    return failed ? -1 : 0;
}

/* Gradient of one receiver's block sums, given gden [H], gnum [A], ges [H,de] and the forward's
 * p of each pair (S): writes the rows' dPb (q_e | k_e | m_e) and dEb (the direct term p * ges),
 * adds into the receiver's dq and the senders' dk, dv. */
static inline __attribute__((always_inline)) void attn_recv_bwd(
    int64_t A, int64_t H, int64_t de, float scale, int64_t ns, const float *RESTRICT Pb,
    const float *RESTRICT Eb, const float *RESTRICT S, int64_t row0, int64_t rstride,
    const float *RESTRICT q, const float *RESTRICT kv, const float *RESTRICT gden,
    const float *RESTRICT gnum, const float *RESTRICT ges, float *RESTRICT dPb,
    float *RESTRICT dEb, float *RESTRICT dq, float *RESTRICT dkv, float *RESTRICT tmp) {
    const int64_t dh = A / H, A3 = 3 * A;
    float *RESTRICT a = tmp, *RESTRICT kk = tmp + A, *RESTRICT vm = tmp + 2 * A;
    float ds[64]; /* H <= 64, checked by the caller */
    for (int64_t j = 0; j < ns; j++) {
        const float *RESTRICT pr = Pb + j * A3;
        const float *RESTRICT er = Eb + j * de;
        const float *RESTRICT p = S + (row0 + j * rstride) * H;
        const float *RESTRICT kj = kv + j * A3;
        const float *RESTRICT vj = kj + A;
        float *RESTRICT dpr = dPb + j * A3;
        float *RESTRICT der = dEb + j * de;
        float *RESTRICT dkj = dkv + j * A3;
        float *RESTRICT dvj = dkj + A;
        for (int64_t d = 0; d < A; d++) {
            a[d] = q[d] + pr[d];
            kk[d] = kj[d] + pr[A + d];
            vm[d] = gnum[d] * (vj[d] * pr[2 * A + d]);
        }
        for (int64_t h = 0; h < H; h++) {
            float dv = 0.0f, dg = 0.0f;
            SIMD_SUM(dv)
            for (int64_t t = 0; t < dh; t++) dv += vm[h * dh + t];
            SIMD_SUM(dg)
            for (int64_t c = 0; c < de; c++) dg += ges[h * de + c] * er[c];
            ds[h] = p[h] * (gden[h] + dv + dg) * scale;
        }
        for (int64_t h = 0; h < H; h++) {
            const float dsh = ds[h], ph = p[h];
            IVDEP
            for (int64_t t = 0; t < dh; t++) {
                const int64_t d = h * dh + t;
                const float gq = dsh * kk[d], gk = dsh * a[d], gn = ph * gnum[d];
                dpr[d] = gq;
                dpr[A + d] = gk;
                dpr[2 * A + d] = gn * vj[d];
                dq[d] += gq;
                dkj[d] += gk;
                dvj[d] += gn * pr[2 * A + d];
            }
        }
        for (int64_t c = 0; c < de; c++) der[c] = 0.0f;
        for (int64_t h = 0; h < H; h++) {
            const float ph = p[h];
            IVDEP
            for (int64_t c = 0; c < de; c++) der[c] += ph * ges[h * de + c];
        }
    }
}

/* The backward of one receiver: recompute its pair terms, the attention backward, then the
 * pair GEMM's backward (dE rows = direct term + dP W, written to their places; dW += dP^T E). */
static inline __attribute__((always_inline)) void attn_recv_bwd_full(
    int64_t A, int64_t H, int64_t de, float scale, int64_t ns, const float *RESTRICT E,
    const float *RESTRICT W, const float *RESTRICT Wt, const float *RESTRICT S, int64_t row0,
    int64_t rstride, const float *RESTRICT q, const float *RESTRICT kv,
    const float *RESTRICT gden, const float *RESTRICT gnum, const float *RESTRICT ges,
    float *RESTRICT dE, float *RESTRICT dW, float *RESTRICT dq, float *RESTRICT dkv,
    const attn_scratch *sc) {
    const int64_t A3 = 3 * A;
    gather_rows(ns, de, E, row0, rstride, sc->eb);
    rows_times_wt(ns, de, A3, sc->eb, Wt, sc->pb);
    attn_recv_bwd(A, H, de, scale, ns, sc->pb, sc->eb, S, row0, rstride, q, kv, gden, gnum, ges,
                  sc->dpb, sc->deb, dq, dkv, sc->tmp);
    rows_times_w(ns, A3, de, sc->dpb, W, sc->deb);
    accumulate_gt_x(ns, A3, de, sc->dpb, sc->eb, dW);
    for (int64_t j = 0; j < ns; j++)
        memcpy(dE + (row0 + j * rstride) * de, sc->deb + j * de, sizeof(float) * (size_t)de);
}

static NOINLINE void attn_bwd_one(
    int64_t b, int64_t N, int64_t no, int64_t ni, int64_t src_off, int64_t dst_off, int64_t A,
    int64_t H, int64_t de, float scale, const float *RESTRICT E, const float *RESTRICT W,
    const float *RESTRICT Wt, const float *RESTRICT QKV, const float *RESTRICT S,
    const float *RESTRICT gden_o, const float *RESTRICT gnum_o, const float *RESTRICT ges_o,
    const float *RESTRICT gden_i, const float *RESTRICT gnum_i, const float *RESTRICT ges_i,
    float *RESTRICT dE, float *RESTRICT dWp, float *RESTRICT dQKV, const attn_scratch *sc) {
    const int64_t A3 = 3 * A;
    const float *node = QKV + b * N * A3;
    float *dnode = dQKV + b * N * A3;
    float *dW = dWp + b * A3 * de; /* this graph's part of the weight gradient */
    memset(dnode, 0, sizeof(float) * (size_t)(N * A3));
    memset(dW, 0, sizeof(float) * (size_t)(A3 * de));
    for (int64_t o = 0; o < no; o++) {
        const int64_t r = b * no + o;
        attn_recv_bwd_full(A, H, de, scale, ni, E, W, Wt, S, (b * 2 * no + o) * ni, 1,
                           node + (dst_off + o) * A3, node + src_off * A3 + A, gden_o + r * H,
                           gnum_o + r * A, ges_o + r * H * de, dE, dW,
                           dnode + (dst_off + o) * A3, dnode + src_off * A3 + A, sc);
    }
    for (int64_t i = 0; i < ni; i++) {
        const int64_t r = b * ni + i;
        attn_recv_bwd_full(A, H, de, scale, no, E, W, Wt, S, (b * 2 + 1) * no * ni + i, ni,
                           node + (src_off + i) * A3, node + dst_off * A3 + A, gden_i + r * H,
                           gnum_i + r * A, ges_i + r * H * de, dE, dW,
                           dnode + (src_off + i) * A3, dnode + dst_off * A3 + A, sc);
    }
}

/* Gradient of ngt_attn_fwd: S from the forward, gden, gnum, ges of both receiver sides ->
 * dE [B,2,no,ni,de], dWp [B,3A,de] (per graph; the caller sums them), dQKV [B,N,3A] (all
 * overwritten). Returns 0, -1 when scratch memory ran out, -2 when H > 64. */
int ngt_attn_bwd(int threads, int64_t B, int64_t N, int64_t no, int64_t ni, int64_t src_off,
                 int64_t dst_off, int64_t A, int64_t H, int64_t de, float scale,
                 const float *RESTRICT E, const float *RESTRICT W, const float *RESTRICT Wt,
                 const float *RESTRICT QKV, const float *RESTRICT S,
                 const float *RESTRICT gden_o, const float *RESTRICT gnum_o,
                 const float *RESTRICT ges_o, const float *RESTRICT gden_i,
                 const float *RESTRICT gnum_i, const float *RESTRICT ges_i, float *RESTRICT dE,
                 float *RESTRICT dWp, float *RESTRICT dQKV) {
    if (H > 64) return -2;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        attn_scratch sc;
        const int ok = attn_scratch_alloc(&sc, no > ni ? no : ni, A, de);
#pragma omp for schedule(static)
        for (int64_t b = 0; b < B; b++) {
            if (ok)
                attn_bwd_one(b, N, no, ni, src_off, dst_off, A, H, de, scale, E, W, Wt, QKV, S,
                             gden_o, gnum_o, ges_o, gden_i, gnum_i, ges_i, dE, dWp, dQKV, &sc);
            else
                failed = 1;
        }
        free(sc.eb);
    }
    return failed ? -1 : 0;
}

/* ---- NG-T edge update: GELU of both directions of a weight -------------------------------- */

/* Phi(x), the standard normal CDF, from erfc by the Chebyshev fit of Numerical Recipes
 * (erfcc: fractional error < 1.2e-7 everywhere) with the polynomial exponential, so that the
 * loops vectorise; also returns phi(x) = exp(-x^2 / 2) / sqrt(2 pi) in *pdf. */
static inline float normal_cdf(float x, float *pdf) {
    float z = fabsf(x) * 0.70710678118654752f;
    float t = 1.0f / (1.0f + 0.5f * z);
    float y = 0.17087277f;
    y = y * t - 0.82215223f;
    y = y * t + 1.48851587f;
    y = y * t - 1.13520398f;
    y = y * t + 0.27886807f;
    y = y * t - 0.18628806f;
    y = y * t + 0.09678418f;
    y = y * t + 0.37409196f;
    y = y * t + 1.00002368f;
    y = y * t - 1.26551223f;
    /* exp_poly clamps its argument at -87: below that both factors are exactly 0 here */
    float ae = y - z * z, ap = -0.5f * x * x;
    float erfc = ae < -87.0f ? 0.0f : t * exp_poly(ae);
    *pdf = ap < -87.0f ? 0.0f : 0.39894228040143268f * exp_poly(ap);
    return x >= 0.0f ? 1.0f - 0.5f * erfc : 0.5f * erfc;
}

/* The pre-activation of the pair (o, i) in direction r: its own half of the pair GEMM, the
 * reverse pair's other half, and the node terms. */
#define NGT_EDGE_PRE(L_r, L_s, To_r, Ti_r, c) ((L_r)[c] + (L_s)[hd + (c)] + ((To_r)[c] + (Ti_r)[c]))

static NOINLINE void ngt_edge_fwd_one(int64_t b, int64_t no, int64_t ni, int64_t hd,
                                      const float *RESTRICT L, const float *RESTRICT To,
                                      const float *RESTRICT Ti, float *RESTRICT out) {
    for (int64_t o = 0; o < no; o++) {
        const float *RESTRICT t0 = To + (b * 2 * no + o) * hd;
        const float *RESTRICT t1 = To + ((b * 2 + 1) * no + o) * hd;
        for (int64_t i = 0; i < ni; i++) {
            const int64_t r0 = (b * 2 * no + o) * ni + i, r1 = r0 + no * ni;
            const float *RESTRICT l0 = L + r0 * 2 * hd, *RESTRICT l1 = L + r1 * 2 * hd;
            const float *RESTRICT u0 = Ti + (b * 2 * ni + i) * hd;
            const float *RESTRICT u1 = Ti + ((b * 2 + 1) * ni + i) * hd;
            float *RESTRICT y0 = out + r0 * hd, *RESTRICT y1 = out + r1 * hd;
            IVDEP
            for (int64_t c = 0; c < hd; c++) {
                float pdf;
                const float x0 = NGT_EDGE_PRE(l0, l1, t0, u0, c);
                const float x1 = NGT_EDGE_PRE(l1, l0, t1, u1, c);
                y0[c] = x0 * normal_cdf(x0, &pdf);
                y1[c] = x1 * normal_cdf(x1, &pdf);
            }
        }
    }
}

/* L [B,2,no,ni,2h] (pair GEMM: own half | reverse half, no bias), To [B,2,no,h], Ti [B,2,ni,h]
 * -> out [B,2,no,ni,h] = gelu(L[b,r,o,i,:h] + L[b,1-r,o,i,h:] + To[b,r,o] + Ti[b,r,i]). */
void ngt_edge_fwd(int threads, int64_t B, int64_t no, int64_t ni, int64_t hd,
                  const float *RESTRICT L, const float *RESTRICT To, const float *RESTRICT Ti,
                  float *RESTRICT out) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < B; b++) ngt_edge_fwd_one(b, no, ni, hd, L, To, Ti, out);
}

static NOINLINE void ngt_edge_bwd_one(int64_t b, int64_t no, int64_t ni, int64_t hd,
                                      const float *RESTRICT L, const float *RESTRICT To,
                                      const float *RESTRICT Ti, const float *RESTRICT dout,
                                      float *RESTRICT dL, float *RESTRICT dTo,
                                      float *RESTRICT dTi) {
    memset(dTo + b * 2 * no * hd, 0, sizeof(float) * (size_t)(2 * no * hd));
    memset(dTi + b * 2 * ni * hd, 0, sizeof(float) * (size_t)(2 * ni * hd));
    for (int64_t o = 0; o < no; o++) {
        const float *RESTRICT t0 = To + (b * 2 * no + o) * hd;
        const float *RESTRICT t1 = To + ((b * 2 + 1) * no + o) * hd;
        float *RESTRICT dt0 = dTo + (b * 2 * no + o) * hd;
        float *RESTRICT dt1 = dTo + ((b * 2 + 1) * no + o) * hd;
        for (int64_t i = 0; i < ni; i++) {
            const int64_t r0 = (b * 2 * no + o) * ni + i, r1 = r0 + no * ni;
            const float *RESTRICT l0 = L + r0 * 2 * hd, *RESTRICT l1 = L + r1 * 2 * hd;
            const float *RESTRICT u0 = Ti + (b * 2 * ni + i) * hd;
            const float *RESTRICT u1 = Ti + ((b * 2 + 1) * ni + i) * hd;
            float *RESTRICT du0 = dTi + (b * 2 * ni + i) * hd;
            float *RESTRICT du1 = dTi + ((b * 2 + 1) * ni + i) * hd;
            const float *RESTRICT g0 = dout + r0 * hd, *RESTRICT g1 = dout + r1 * hd;
            float *RESTRICT dl0 = dL + r0 * 2 * hd, *RESTRICT dl1 = dL + r1 * 2 * hd;
            IVDEP
            for (int64_t c = 0; c < hd; c++) {
                float pdf0, pdf1;
                const float x0 = NGT_EDGE_PRE(l0, l1, t0, u0, c);
                const float x1 = NGT_EDGE_PRE(l1, l0, t1, u1, c);
                const float cdf0 = normal_cdf(x0, &pdf0), cdf1 = normal_cdf(x1, &pdf1);
                const float a0 = g0[c] * (cdf0 + x0 * pdf0), a1 = g1[c] * (cdf1 + x1 * pdf1);
                dl0[c] = a0;
                dl0[hd + c] = a1;
                dl1[c] = a1;
                dl1[hd + c] = a0;
                dt0[c] += a0;
                dt1[c] += a1;
                du0[c] += a0;
                du1[c] += a1;
            }
        }
    }
}

/* Gradient of ngt_edge_fwd: dout [B,2,no,ni,h] -> dL [B,2,no,ni,2h], dTo, dTi (overwritten). */
void ngt_edge_bwd(int threads, int64_t B, int64_t no, int64_t ni, int64_t hd,
                  const float *RESTRICT L, const float *RESTRICT To, const float *RESTRICT Ti,
                  const float *RESTRICT dout, float *RESTRICT dL, float *RESTRICT dTo,
                  float *RESTRICT dTi) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < B; b++) ngt_edge_bwd_one(b, no, ni, hd, L, To, Ti, dout, dL, dTo, dTi);
}

/* ---- residual + bias + dropout + LayerNorm (NG-T edge update) ----------------------------- */

/* y = LayerNorm(res + drop(z + bias)) * gamma + beta over the C channels of each of R rows,
 * with drop(t) = t * keep * scale. The dropout mask is a hash of the element's index and a
 * seed (drawn from torch's generator by the caller), so the backward recomputes it instead of
 * storing it: keep = lowbias32(index * golden + seed) >= thresh (thresh = 0: no dropout). */
static inline uint32_t drop_hash(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

#define RES_LN_BLOCK 256 /* rows per block: the unit of parallel work and of gradient partials */

static inline __attribute__((always_inline)) void res_ln_row(
    int64_t C, int64_t r, const float *RESTRICT z, const float *RESTRICT bias,
    const float *RESTRICT res, uint32_t seed, uint32_t thresh, float scale, float *RESTRICT u) {
    IVDEP
    for (int64_t c = 0; c < C; c++) {
        uint32_t h = drop_hash((uint32_t)(r * C + c) * 0x9E3779B9U + seed);
        float k = h >= thresh ? scale : 0.0f;
        u[c] = res[c] + (z[c] + bias[c]) * k;
    }
}

static NOINLINE void res_ln_fwd_block(int64_t blk, int64_t R, int64_t C, const float *RESTRICT Z,
                                      const float *RESTRICT bias, const float *RESTRICT Res,
                                      uint32_t seed, uint32_t thresh, float scale,
                                      const float *RESTRICT gamma, const float *RESTRICT beta,
                                      float eps, float *RESTRICT Y, float *RESTRICT stats) {
    int64_t end = (blk + 1) * RES_LN_BLOCK < R ? (blk + 1) * RES_LN_BLOCK : R;
    for (int64_t r = blk * RES_LN_BLOCK; r < end; r++) {
        float *RESTRICT y = Y + r * C;
        res_ln_row(C, r, Z + r * C, bias, Res + r * C, seed, thresh, scale, y);
        float mean = 0.0f, var = 0.0f;
        SIMD_SUM(mean)
        for (int64_t c = 0; c < C; c++) mean += y[c];
        mean /= (float)C;
        SIMD_SUM(var)
        for (int64_t c = 0; c < C; c++) var += (y[c] - mean) * (y[c] - mean);
        const float rstd = 1.0f / sqrtf(var / (float)C + eps);
        IVDEP
        for (int64_t c = 0; c < C; c++) y[c] = (y[c] - mean) * rstd * gamma[c] + beta[c];
        stats[2 * r] = mean;
        stats[2 * r + 1] = rstd;
    }
}

/* Z, Res [R,C], bias, gamma, beta [C] -> Y [R,C], stats [R,2] (mean, 1/std). */
void res_ln_fwd(int threads, int64_t R, int64_t C, const float *RESTRICT Z,
                const float *RESTRICT bias, const float *RESTRICT Res, uint32_t seed,
                uint32_t thresh, float scale, const float *RESTRICT gamma,
                const float *RESTRICT beta, float eps, float *RESTRICT Y, float *RESTRICT stats) {
    const int64_t nblk = (R + RES_LN_BLOCK - 1) / RES_LN_BLOCK;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t blk = 0; blk < nblk; blk++)
        res_ln_fwd_block(blk, R, C, Z, bias, Res, seed, thresh, scale, gamma, beta, eps, Y, stats);
}

static NOINLINE void res_ln_bwd_block(int64_t blk, int64_t R, int64_t C, const float *RESTRICT Z,
                                      const float *RESTRICT bias, const float *RESTRICT Res,
                                      uint32_t seed, uint32_t thresh, float scale,
                                      const float *RESTRICT gamma, const float *RESTRICT stats,
                                      const float *RESTRICT dY, float *RESTRICT dZ,
                                      float *RESTRICT dRes, float *RESTRICT part,
                                      float *RESTRICT u) {
    float *RESTRICT dgamma = part + blk * 3 * C, *RESTRICT dbeta = dgamma + C,
                    *RESTRICT dbias = dgamma + 2 * C;
    for (int64_t c = 0; c < 3 * C; c++) dgamma[c] = 0.0f;
    int64_t end = (blk + 1) * RES_LN_BLOCK < R ? (blk + 1) * RES_LN_BLOCK : R;
    for (int64_t r = blk * RES_LN_BLOCK; r < end; r++) {
        const float *RESTRICT dy = dY + r * C;
        const float mean = stats[2 * r], rstd = stats[2 * r + 1];
        res_ln_row(C, r, Z + r * C, bias, Res + r * C, seed, thresh, scale, u);
        float sg = 0.0f, sgx = 0.0f;
        SIMD_SUM(sg)
        for (int64_t c = 0; c < C; c++) sg += dy[c] * gamma[c];
        SIMD_SUM(sgx)
        for (int64_t c = 0; c < C; c++) sgx += dy[c] * gamma[c] * ((u[c] - mean) * rstd);
        sg /= (float)C;
        sgx /= (float)C;
        float *RESTRICT dz = dZ + r * C, *RESTRICT dres = dRes + r * C;
        IVDEP
        for (int64_t c = 0; c < C; c++) {
            const float xh = (u[c] - mean) * rstd;
            const float du = rstd * (dy[c] * gamma[c] - sg - xh * sgx);
            uint32_t h = drop_hash((uint32_t)(r * C + c) * 0x9E3779B9U + seed);
            const float k = h >= thresh ? scale : 0.0f;
            dres[c] = du;
            dz[c] = du * k;
            dgamma[c] += dy[c] * xh;
            dbeta[c] += dy[c];
            dbias[c] += du * k;
        }
    }
}

/* Gradient of res_ln_fwd: dY -> dZ, dRes [R,C] and per block of RES_LN_BLOCK rows the partial
 * sums part [nblk, 3, C] of dgamma, dbeta, dbias (summed by the caller: the result does not
 * depend on the thread count). Returns -1 when scratch memory ran out. */
int res_ln_bwd(int threads, int64_t R, int64_t C, const float *RESTRICT Z,
               const float *RESTRICT bias, const float *RESTRICT Res, uint32_t seed,
               uint32_t thresh, float scale, const float *RESTRICT gamma,
               const float *RESTRICT stats, const float *RESTRICT dY, float *RESTRICT dZ,
               float *RESTRICT dRes, float *RESTRICT part) {
    const int64_t nblk = (R + RES_LN_BLOCK - 1) / RES_LN_BLOCK;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float *u = (float *)malloc(sizeof(float) * (size_t)C);
#pragma omp for schedule(static)
        for (int64_t blk = 0; blk < nblk; blk++) {
            if (u)
                res_ln_bwd_block(blk, R, C, Z, bias, Res, seed, thresh, scale, gamma, stats, dY,
                                 dZ, dRes, part, u);
            else
                failed = 1;
        }
        free(u);
    }
    return failed ? -1 : 0;
}

/* ---- NG-GNN helpers ------------------------------------------------------------------------ */

static inline __attribute__((always_inline)) void edge_act(int64_t n, int64_t de,
                                                            const float *RESTRICT H,
                                                            const float *RESTRICT t,
                                                            const float *RESTRICT Ti,
                                                            float *RESTRICT A) {
    for (int64_t i = 0; i < n; i++) {
        const float *RESTRICT u = Ti + i * de;
        IVDEP
        for (int64_t c = 0; c < de; c++) {
            float h = H[i * de + c] + (t[c] + u[c]);
            A[i * de + c] = h / (1.0f + exp_poly(-h));
        }
    }
}

static inline __attribute__((always_inline)) void add_bias_residual(int64_t n,
                                                                    const float *RESTRICT e,
                                                                    const float *RESTRICT bias,
                                                                    float *RESTRICT y) {
    IVDEP
    for (int64_t c = 0; c < n; c++) y[c] += e[c] + bias[c];
}

static inline __attribute__((always_inline)) void add_row(int64_t n, const float *RESTRICT x,
                                                          float *RESTRICT acc) {
    IVDEP
    for (int64_t c = 0; c < n; c++) acc[c] += x[c];
}

/* h (pre-activation without node terms) <- dA silu'(h + t + u); dt, du += that */
static inline __attribute__((always_inline)) void silu_grad_row(
    int64_t n, float *RESTRICT h, const float *RESTRICT t, const float *RESTRICT u,
    const float *RESTRICT da, float *RESTRICT dt, float *RESTRICT du) {
    IVDEP
    for (int64_t c = 0; c < n; c++) {
        const float x = h[c] + (t[c] + u[c]);
        const float sig = 1.0f / (1.0f + exp_poly(-x));
        const float g = da[c] * (sig * (1.0f + x * (1.0f - sig)));
        h[c] = g;
        dt[c] += g;
        du[c] += g;
    }
}

/* ---- NG-GNN: a whole layer's message statistics and edge update -------------------------- */

/* One NG-GNN layer of an MLP graph: L blocks, block k joining node layer k (w[k] nodes from
 * off[k]) to node layer k+1, with edges Es[k] = [B,2,w[k+1],w[k],de] (direction 0: source
 * i -> target o, direction 1: o -> i). Messages j -> r use the node terms of the whole graph:
 *     m = (beta + cb) + (gamma + cg) * (A[r] + Bn[j]),   (gamma | beta) = E Wf^T
 * and every node's four statistics (sum, sum of squares, min, max) [B,N,4,d] gather its
 * messages from both of its blocks, with the sender's node index as the min / max argument
 * (I [B,N,2,d]). The FiLM rows of a target's ni edges per direction are computed into a small
 * buffer (G = E Wf^T, Wt = Wf^T [de,2d]), used and dropped; the backward recomputes them. */
static NOINLINE void lmsg_fwd_one(int64_t b, int64_t L, const int64_t *w, const int64_t *off,
                                  int64_t N, int64_t d, int64_t de, const float *const *Es,
                                  const float *RESTRICT Wt, const float *RESTRICT C,
                                  const float *RESTRICT A, const float *RESTRICT Bn,
                                  float *RESTRICT S, int32_t *RESTRICT I, float *RESTRICT g0,
                                  float *RESTRICT g1) {
    const float *RESTRICT cg = C, *RESTRICT cb = C + d;
    const float *a = A + b * N * d, *bn = Bn + b * N * d;
    float *s = S + b * N * 4 * d;
    int32_t *ix = I + b * N * 2 * d;
    for (int64_t n = 0; n < N; n++) stats_init(d, s + n * 4 * d, ix + n * 2 * d);
    for (int64_t k = 0; k < L; k++) {
        const int64_t ni = w[k], no = w[k + 1], so = off[k], to = off[k + 1];
        const float *E = Es[k];
        for (int64_t o = 0; o < no; o++) {
            const int64_t ro = to + o;
            rows_times_wt(ni, de, 2 * d, E + ((b * 2 + 0) * no + o) * ni * de, Wt, g0);
            rows_times_wt(ni, de, 2 * d, E + ((b * 2 + 1) * no + o) * ni * de, Wt, g1);
            for (int64_t i = 0; i < ni; i++) {
                const int64_t ri = so + i;
                /* direction 0: i -> o, into node o; direction 1: o -> i, into node i */
                msg_row_fwd(d, g0 + i * 2 * d, cg, cb, a + ro * d, bn + ri * d, s + ro * 4 * d,
                            ix + ro * 2 * d, (int32_t)ri);
                msg_row_fwd(d, g1 + i * 2 * d, cg, cb, a + ri * d, bn + ro * d, s + ri * 4 * d,
                            ix + ri * 2 * d, (int32_t)ro);
            }
        }
    }
}

/* w [L+1], off [L+1] (node layer widths and offsets), Es [L] edge tensors, Wt [de,2d], C [2d],
 * A, Bn [B,N,d] -> S [B,N,4,d], I [B,N,2,d]. Returns -1 when scratch memory ran out. */
int ngnn_layer_msg_fwd(int threads, int64_t B, int64_t L, const int64_t *w, const int64_t *off,
                       int64_t N, int64_t d, int64_t de, const float *const *Es,
                       const float *RESTRICT Wt, const float *RESTRICT C,
                       const float *RESTRICT A, const float *RESTRICT Bn, float *RESTRICT S,
                       int32_t *RESTRICT I) {
    int64_t wmax = 1;
    for (int64_t k = 0; k <= L; k++) wmax = w[k] > wmax ? w[k] : wmax;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float *g = (float *)malloc(sizeof(float) * (size_t)(4 * wmax * d));
#pragma omp for schedule(static)
        for (int64_t b = 0; b < B; b++) {
            if (g)
                lmsg_fwd_one(b, L, w, off, N, d, de, Es, Wt, C, A, Bn, S, I, g, g + 2 * wmax * d);
            else
                failed = 1;
        }
        free(g);
    }
    return failed ? -1 : 0;
}

static NOINLINE void lmsg_bwd_one(int64_t b, int64_t L, const int64_t *w, const int64_t *off,
                                  int64_t N, int64_t d, int64_t de, const float *const *Es,
                                  const float *RESTRICT W, const float *RESTRICT Wt,
                                  const float *RESTRICT C, const float *RESTRICT A,
                                  const float *RESTRICT Bn, const int32_t *RESTRICT I,
                                  const float *RESTRICT dS, float *const *dEs,
                                  float *RESTRICT dW, float *RESTRICT dcg, float *RESTRICT dcb,
                                  float *RESTRICT dA, float *RESTRICT dBn, float *RESTRICT g,
                                  float *RESTRICT dg) {
    const float *RESTRICT cg = C, *RESTRICT cb = C + d;
    const float *a = A + b * N * d, *bn = Bn + b * N * d;
    const float *ds = dS + b * N * 4 * d;
    const int32_t *ix = I + b * N * 2 * d;
    float *da = dA + b * N * d, *dbn = dBn + b * N * d;
    memset(da, 0, sizeof(float) * (size_t)(N * d));
    memset(dbn, 0, sizeof(float) * (size_t)(N * d));
    memset(dcg, 0, sizeof(float) * (size_t)d);
    memset(dcb, 0, sizeof(float) * (size_t)d);
    memset(dW, 0, sizeof(float) * (size_t)(2 * d * de));
    for (int64_t k = 0; k < L; k++) {
        const int64_t ni = w[k], no = w[k + 1], so = off[k], to = off[k + 1];
        const float *E = Es[k];
        float *dE = dEs[k];
        for (int64_t o = 0; o < no; o++) {
            for (int64_t r = 0; r < 2; r++) {
                const int64_t row0 = ((b * 2 + r) * no + o) * ni;
                rows_times_wt(ni, de, 2 * d, E + row0 * de, Wt, g);
                for (int64_t i = 0; i < ni; i++) {
                    const int64_t recv = r == 0 ? to + o : so + i, send = r == 0 ? so + i : to + o;
                    msg_row_bwd(d, g + i * 2 * d, cg, cb, a + recv * d, bn + send * d,
                                ds + recv * 4 * d, ix + recv * 2 * d, (int32_t)send,
                                dg + i * 2 * d, dcg, dcb, da + recv * d, dbn + send * d);
                }
                memset(dE + row0 * de, 0, sizeof(float) * (size_t)(ni * de));
                rows_times_w(ni, 2 * d, de, dg, W, dE + row0 * de);
                accumulate_gt_x(ni, 2 * d, de, dg, E + row0 * de, dW);
            }
        }
    }
}

/* Gradient of ngnn_layer_msg_fwd: dS [B,N,4,d] -> dEs [L] (each like its Es), dWp [B,2d,de]
 * and dC [B,2d] (per graph), dA, dBn [B,N,d] (all overwritten). W = Wf [2d,de]. */
int ngnn_layer_msg_bwd(int threads, int64_t B, int64_t L, const int64_t *w, const int64_t *off,
                       int64_t N, int64_t d, int64_t de, const float *const *Es,
                       const float *RESTRICT W, const float *RESTRICT Wt,
                       const float *RESTRICT C, const float *RESTRICT A,
                       const float *RESTRICT Bn, const int32_t *RESTRICT I,
                       const float *RESTRICT dS, float *const *dEs, float *RESTRICT dWp,
                       float *RESTRICT dC, float *RESTRICT dA, float *RESTRICT dBn) {
    int64_t wmax = 1;
    for (int64_t k = 0; k <= L; k++) wmax = w[k] > wmax ? w[k] : wmax;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float *g = (float *)malloc(sizeof(float) * (size_t)(4 * wmax * d));
#pragma omp for schedule(static)
        for (int64_t b = 0; b < B; b++) {
            if (g)
                lmsg_bwd_one(b, L, w, off, N, d, de, Es, W, Wt, C, A, Bn, I, dS, dEs,
                             dWp + b * 2 * d * de, dC + b * 2 * d, dC + b * 2 * d + d, dA, dBn,
                             g, g + 2 * wmax * d);
            else
                failed = 1;
        }
        free(g);
    }
    return failed ? -1 : 0;
}

/* The edge update of every block of a layer:
 *     out = E + silu(E We^T + V[receiver] + U[sender]) Wo^T + bo
 * (V with edge_lin's bias included), computed per (direction, target) block of ni rows with
 * both GEMMs inside; the backward recomputes their outputs. Wte, Wto: transposed weights. */
static inline __attribute__((always_inline)) void ledge_terms(int64_t b, int64_t N, int64_t de,
                                                              int64_t r, int64_t so, int64_t to,
                                                              int64_t o, const float *U,
                                                              const float *V, const float **t,
                                                              const float **rows) {
    /* direction 0 (i -> o): receiver o (V), senders i (U); direction 1 (o -> i): the reverse */
    *t = (r == 0 ? V : U) + (b * N + to + o) * de;
    *rows = (r == 0 ? U : V) + (b * N + so) * de;
}

static NOINLINE void ledge_fwd_one(int64_t b, int64_t L, const int64_t *w, const int64_t *off,
                                   int64_t N, int64_t de, const float *const *Es,
                                   const float *RESTRICT Wte, const float *RESTRICT Wto,
                                   const float *RESTRICT bo, const float *RESTRICT U,
                                   const float *RESTRICT V, float *const *Outs, float *RESTRICT h,
                                   float *RESTRICT a) {
    for (int64_t k = 0; k < L; k++) {
        const int64_t ni = w[k], no = w[k + 1], so = off[k], to = off[k + 1];
        for (int64_t r = 0; r < 2; r++) {
            for (int64_t o = 0; o < no; o++) {
                const int64_t row0 = ((b * 2 + r) * no + o) * ni;
                const float *e = Es[k] + row0 * de, *t, *rows;
                float *y = Outs[k] + row0 * de;
                ledge_terms(b, N, de, r, so, to, o, U, V, &t, &rows);
                rows_times_wt(ni, de, de, e, Wte, h);
                edge_act(ni, de, h, t, rows, a);
                rows_times_wt(ni, de, de, a, Wto, y);
                for (int64_t i = 0; i < ni; i++) add_bias_residual(de, e + i * de, bo, y + i * de);
            }
        }
    }
}

/* Es [L], Wte, Wto [de,de], bo [de], U, V [B,N,de] -> Outs [L] (each like its Es). */
int ngnn_layer_edge_fwd(int threads, int64_t B, int64_t L, const int64_t *w, const int64_t *off,
                        int64_t N, int64_t de, const float *const *Es, const float *RESTRICT Wte,
                        const float *RESTRICT Wto, const float *RESTRICT bo,
                        const float *RESTRICT U, const float *RESTRICT V, float *const *Outs) {
    int64_t wmax = 1;
    for (int64_t k = 0; k <= L; k++) wmax = w[k] > wmax ? w[k] : wmax;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float *buf = (float *)malloc(sizeof(float) * (size_t)(2 * wmax * de));
#pragma omp for schedule(static)
        for (int64_t b = 0; b < B; b++) {
            if (buf)
                ledge_fwd_one(b, L, w, off, N, de, Es, Wte, Wto, bo, U, V, Outs, buf,
                              buf + wmax * de);
            else
                failed = 1;
        }
        free(buf);
    }
    return failed ? -1 : 0;
}

static NOINLINE void ledge_bwd_one(int64_t b, int64_t L, const int64_t *w, const int64_t *off,
                                   int64_t N, int64_t de, const float *const *Es,
                                   const float *RESTRICT We, const float *RESTRICT Wte,
                                   const float *RESTRICT Wo, const float *RESTRICT U,
                                   const float *RESTRICT V, const float *const *dOuts, float *const *dEs,
                                   float *RESTRICT dWe, float *RESTRICT dWo, float *RESTRICT dbo,
                                   float *RESTRICT dU, float *RESTRICT dV, float *RESTRICT h,
                                   float *RESTRICT a, float *RESTRICT da) {
    memset(dU + b * N * de, 0, sizeof(float) * (size_t)(N * de));
    memset(dV + b * N * de, 0, sizeof(float) * (size_t)(N * de));
    memset(dWe, 0, sizeof(float) * (size_t)(de * de));
    memset(dWo, 0, sizeof(float) * (size_t)(de * de));
    memset(dbo, 0, sizeof(float) * (size_t)de);
    for (int64_t k = 0; k < L; k++) {
        const int64_t ni = w[k], no = w[k + 1], so = off[k], to = off[k + 1];
        for (int64_t r = 0; r < 2; r++) {
            for (int64_t o = 0; o < no; o++) {
                const int64_t row0 = ((b * 2 + r) * no + o) * ni;
                const float *e = Es[k] + row0 * de, *gy = dOuts[k] + row0 * de, *t, *rows;
                float *de_ = dEs[k] + row0 * de;
                ledge_terms(b, N, de, r, so, to, o, U, V, &t, &rows);
                /* the gradients of the same node terms */
                float *dt = (r == 0 ? dV : dU) + (b * N + to + o) * de;
                float *drows = (r == 0 ? dU : dV) + (b * N + so) * de;
                rows_times_wt(ni, de, de, e, Wte, h);
                edge_act(ni, de, h, t, rows, a);
                /* through edge_out: dA = dY Wo, dWo += dY^T A, dbo += sum dY */
                memset(da, 0, sizeof(float) * (size_t)(ni * de));
                rows_times_w(ni, de, de, gy, Wo, da);
                accumulate_gt_x(ni, de, de, gy, a, dWo);
                for (int64_t i = 0; i < ni; i++) add_row(de, gy + i * de, dbo);
                /* through silu (dH overwrites h) and the node terms */
                for (int64_t i = 0; i < ni; i++)
                    silu_grad_row(de, h + i * de, t, rows + i * de, da + i * de, dt,
                                  drows + i * de);
                /* through edge_lin and the residual: dE = dY + dH We, dWe += dH^T E */
                memcpy(de_, gy, sizeof(float) * (size_t)(ni * de));
                rows_times_w(ni, de, de, h, We, de_);
                accumulate_gt_x(ni, de, de, h, e, dWe);
            }
        }
    }
}

/* Gradient of ngnn_layer_edge_fwd: dOuts [L] -> dEs [L], per graph dWe, dWo [B,de,de] and dbo
 * [B,de], dU, dV [B,N,de] (all overwritten). We, Wo: the weights ([de,de], out x in), Wte:
 * We^T. */
int ngnn_layer_edge_bwd(int threads, int64_t B, int64_t L, const int64_t *w, const int64_t *off,
                        int64_t N, int64_t de, const float *const *Es, const float *RESTRICT We,
                        const float *RESTRICT Wte, const float *RESTRICT Wo,
                        const float *RESTRICT U, const float *RESTRICT V,
                        const float *const *dOuts, float *const *dEs,
                        float *RESTRICT dWe, float *RESTRICT dWo, float *RESTRICT dbo,
                        float *RESTRICT dU, float *RESTRICT dV) {
    int64_t wmax = 1;
    for (int64_t k = 0; k <= L; k++) wmax = w[k] > wmax ? w[k] : wmax;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float *buf = (float *)malloc(sizeof(float) * (size_t)(3 * wmax * de));
#pragma omp for schedule(static)
        for (int64_t b = 0; b < B; b++) {
            if (buf)
                ledge_bwd_one(b, L, w, off, N, de, Es, We, Wte, Wo, U, V, dOuts, dEs,
                              dWe + b * de * de, dWo + b * de * de, dbo + b * de, dU, dV, buf,
                              buf + wmax * de, buf + 2 * wmax * de);
            else
                failed = 1;
        }
        free(buf);
    }
    return failed ? -1 : 0;
}

/* ---- random Fourier features: sin and cos of 2 pi x B ------------------------------------- */

/* sin and cos of t sharing one range reduction: t = j pi/2 + r with |r| <= pi/4 (pi/2 in three
 * parts, Cody-Waite, exact for |j| < 2^12 and accurate to ~1e-7 absolute for |t| < 1e5), then
 * minimax-style Taylor polynomials on r and the quadrant j mod 4. Larger |t| (and NaN / Inf) are
 * redone with libm by the caller. */
static inline void sincos_poly(float t, float *s, float *c) {
    const float j = (t * 0.636619772367581343f + 12582912.0f) - 12582912.0f; /* round(t 2/pi) */
    float r = t - j * 1.5703125f;
    r = r - j * 4.83751296997070312e-4f;
    r = r - j * 7.54978995489188216e-8f;
    const float r2 = r * r;
    float ps = -1.9515295891e-4f;
    ps = ps * r2 + 8.3321608736e-3f;
    ps = ps * r2 - 1.6666654611e-1f;
    const float sr = r + r * r2 * ps;
    float pc = 2.443315711809948e-5f;
    pc = pc * r2 - 1.388731625493765e-3f;
    pc = pc * r2 + 4.166664568298827e-2f;
    const float cr = 1.0f - 0.5f * r2 + r2 * r2 * pc;
    const int32_t q = (int32_t)j & 3;
    const float sa = (q & 1) ? cr : sr, ca = (q & 1) ? sr : cr;
    *s = (q & 2) ? -sa : sa;
    *c = ((q + 1) & 2) ? -ca : ca;
}

static NOINLINE void fourier_rows(int64_t r0, int64_t r1, int64_t K, int64_t F,
                                  const float *RESTRICT X, const float *RESTRICT B,
                                  float *RESTRICT S, float *RESTRICT Co, float *RESTRICT t) {
    for (int64_t n = r0; n < r1; n++) {
        for (int64_t f = 0; f < F; f++) t[f] = 0.0f;
        for (int64_t k = 0; k < K; k++) {
            const float x = 6.28318530717958648f * X[n * K + k];
            IVDEP
            for (int64_t f = 0; f < F; f++) t[f] += x * B[k * F + f];
        }
        float *RESTRICT s = S + n * F, *RESTRICT co = Co + n * F;
        int big = 0;
        IVDEP
        for (int64_t f = 0; f < F; f++) {
            sincos_poly(t[f], s + f, co + f);
            big |= !(fabsf(t[f]) < 1e5f);
        }
        if (big) {
            for (int64_t f = 0; f < F; f++) {
                if (!(fabsf(t[f]) < 1e5f)) {
                    s[f] = sinf(t[f]);
                    co[f] = cosf(t[f]);
                }
            }
        }
    }
}

/* X [N,K], B [K,F] -> S = sin(2 pi X B), C = cos(2 pi X B) [N,F]. Returns -1 when scratch
 * memory ran out. */
int fourier_sincos(int threads, int64_t N, int64_t K, int64_t F, const float *RESTRICT X,
                   const float *RESTRICT B, float *RESTRICT S, float *RESTRICT Co) {
    const int64_t block = 256, nblk = (N + block - 1) / block;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float *t = (float *)malloc(sizeof(float) * (size_t)F);
#pragma omp for schedule(static)
        for (int64_t i = 0; i < nblk; i++) {
            if (t)
                fourier_rows(i * block, (i + 1) * block < N ? (i + 1) * block : N, K, F, X, B, S,
                             Co, t);
            else
                failed = 1;
        }
        free(t);
    }
    return failed ? -1 : 0;
}
