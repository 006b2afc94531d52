"""The fused kernel's fixed C++ part, written once for every architecture (``source`` adds the
generated part): the lane vector types, the kernel's own ``exp`` and ``log`` (Cephes'
single-precision polynomials: no C library function, so the same bits under any libm), the
square root, the register-tiled products, and the argument block ``Args`` (mirrored by
``build.Args``).

Products, with models in lanes so that every multiply-add is lane-wise::

    forward   z[b][o] = bias[o] + sum_i h[b][i] W[o][i]     tiles of examples x outputs
    dh        dh[b][i] = sum_o dz[b][o] W[o][i]             tiles of examples x inputs
    dW        gW[o][i] = sum_b dz[b][o] h[b][i]             tiles of outputs x inputs

each with the operand a tile reuses held in a register (``KEEP``) and the loop over the tile
kept in L1 (outputs or inputs outer, examples inner).
"""

from __future__ import annotations

__all__ = ["RUNTIME", "TILES"]

#: register tiles (examples x outputs forward, examples x inputs for dh, outputs x inputs for dW),
#: measured on a 2-core AMD EPYC (AVX2, Zen 3) on program 6 (widths 32, batches of 20): 4x3, 3x4,
#: 4x2 (12, 12 and 8 accumulators) 11 % faster than 2x4 for each (the kernel alone, epochs
#: alternating); of those tried (2x4, 4x2, 3x4, 4x3, 2x6, 5x2, 2x5) the best for each product
#: alone. Any shape gives the same bits (``cover``: the one-output tiles stay where they were).
TILES = "#define FT_B 4\n#define FT_O 3\n#define HT_B 3\n#define HT_I 4\n#define WT_O 4\n#define WT_I 2"

RUNTIME = r"""
#include <atomic>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>
#include <immintrin.h>

typedef float vf __attribute__((vector_size(LANES * 4)));
typedef int32_t vi __attribute__((vector_size(LANES * 4)));

static inline vf sel(vi m, vf a, vf b) { return m ? a : b; }
// keep a reused operand in a register (else the compiler reads it from memory at every use)
#if defined(__AVX__) && LANES * 4 <= 64
#define KEEP(v) asm("" : "+x"(v))
#else
#define KEEP(v)
#endif
static inline double sel(bool m, double a, double b) { return m ? a : b; }
static inline vf splat(float a) { return vf{} + a; }

// Cephes expf / logf (single precision), our own: no libm, the same bits everywhere
static inline vf v_exp(vf x) {
  x = sel(x > 88.0f, splat(88.0f), x);
  x = sel(x < -87.0f, splat(-87.0f), x);
  vf fx = x * 1.44269504088896341f + 0.5f;
  vf t = __builtin_convertvector(__builtin_convertvector(fx, vi), vf);
  t = sel(t > fx, t - 1.0f, t);
  vi n = __builtin_convertvector(t, vi);
  x = x - t * 0.693359375f;
  x = x - t * -2.12194440e-4f;
  vf z = x * x;
  vf y = splat(1.9875691500E-4f);
  y = y * x + 1.3981999507E-3f;
  y = y * x + 8.3334519073E-3f;
  y = y * x + 4.1665795894E-2f;
  y = y * x + 1.6666665459E-1f;
  y = y * x + 5.0000001201E-1f;
  y = y * z + x + 1.0f;
  vi e = (n + 127) << 23;
  return y * (vf)e;
}
static inline vf v_log(vf x) {  // x > 0 and normal, or NaN (NaN out: a model gone NaN has a NaN loss)
  vi i = (vi)x;
  vi e = ((i >> 23) & 0xff) - 126;
  i = (i & 0x807fffff) | 0x3f000000;
  vf m = (vf)i;
  vi small = m < 0.707106781186547524f;
  e = e + small;  // (true is -1)
  m = sel(small, m + m - 1.0f, m - 1.0f);
  vf z = m * m;
  vf y = splat(7.0376836292E-2f);
  y = y * m - 1.1514610310E-1f;
  y = y * m + 1.1676998740E-1f;
  y = y * m - 1.2420140846E-1f;
  y = y * m + 1.4249322787E-1f;
  y = y * m - 1.6668057665E-1f;
  y = y * m + 2.0000714765E-1f;
  y = y * m - 2.4999993993E-1f;
  y = y * m + 3.3333331174E-1f;
  y = y * m * z;
  vf fe = __builtin_convertvector(e, vf);
  y = y + fe * -2.12194440e-4f;
  y = y - 0.5f * z;
  return sel(x == x, m + y + fe * 0.693359375f, x);
}
static inline double ipow(double b, int64_t t) {  // b^t by squaring: IEEE products, no libm pow
  double r = 1.0;
  for (; t > 0; t >>= 1, b *= b)
    if (t & 1) r *= b;
  return r;
}
// (float64 instances of the terms serve only the tests' gradcheck; training never calls these)
static inline double v_exp(double x) { return __builtin_exp(x); }
static inline double v_log(double x) { return __builtin_log(x); }

static inline vf v_sqrt(vf x) {
#if LANES == 16 && defined(__AVX512F__)
  return (vf)_mm512_sqrt_ps((__m512)x);
#elif LANES == 8 && defined(__AVX__)
  return (vf)_mm256_sqrt_ps((__m256)x);
#elif defined(__AVX__)
  vf r;
  for (int k = 0; k < LANES; k += 8) {
    __m256 a; std::memcpy(&a, (const float*)&x + k, 32);
    a = _mm256_sqrt_ps(a);
    std::memcpy((float*)&r + k, &a, 32);
  }
  return r;
#else
  vf r;
  for (int k = 0; k < LANES; ++k) r[k] = __builtin_sqrtf(x[k]);
  return r;
#endif
}

#define TILE static inline __attribute__((always_inline))
#define TILE_RUN inline __attribute__((always_inline))

// one step of a register tile: acc[t][u] += a[t] * b[u] (a[t] at pa[t * sa], b[u] at pb[u * sb]).
// The shorter side is held in registers, the other streamed one vector at a time, so that a
// TA x TB tile needs TA * TB + min(TA, TB) + 1 vector registers; every operand is KEEP'd (read
// once per step, never again from memory).
template <int TA, int TB>
TILE void outer(vf (&acc)[TA][TB], const vf* __restrict pa, int sa, const vf* __restrict pb, int sb) {
  if constexpr (TA <= TB) {
    vf a[TA];
    for (int t = 0; t < TA; ++t) { a[t] = pa[t * sa]; KEEP(a[t]); }
    for (int u = 0; u < TB; ++u) {
      vf b = pb[u * sb];
      KEEP(b);
      for (int t = 0; t < TA; ++t) acc[t][u] += a[t] * b;
    }
  } else {
    vf b[TB];
    for (int u = 0; u < TB; ++u) { b[u] = pb[u * sb]; KEEP(b[u]); }
    for (int t = 0; t < TA; ++t) {
      vf a = pa[t * sa];
      KEEP(a);
      for (int u = 0; u < TB; ++u) acc[t][u] += a * b[u];
    }
  }
}

// Which outputs a product sums with separate multiplies and adds: the compiler's choice, kept as it
// was. A tile of one output is one chain of multiply-adds through a loop; g++ tuned for some
// CPUs (-mtune=znver*) then leaves multiply and add apart (avoid_fma_chains), while a tile of two
// or more outputs always gets fused multiply-adds. So each product computes, with one-output
// tiles, exactly the outputs that the first kernel's tiling (2 x 4 for each product) gave a tile of
// their own (``corner``: the odd last example of a batch or weight row, times the columns that
// its tiles of 4 left over) and every other output in tiles of two or more, whatever shape those
// have: every output's bits are the first kernel's, on every CPU.
template <int N>
constexpr int corner() { return N >= 4 ? N - N % 4 : (N == 1 ? 0 : N); }  // the first corner column

// rows [r0, r1) x columns [C0, C1) in tiles of up to TR x TC outputs, none of one output (the
// rows are an even count): columns outer (COLS_OUTER) or rows outer
template <int TR, int TC, int C0, int C1, class F>
TILE void row_tiles(const F& f, int r) {  // TR rows at r, all the columns
  constexpr int C = C1 - C0, full = C / TC, rem = C % TC;
  if constexpr (TR == 1 && rem == 1 && full > 0) {  // never 1 x 1: the last block one wider
    for (int k = 0; k + 1 < full; ++k) f.template run<1, TC>(r, C0 + k * TC);
    f.template run<1, TC + 1>(r, C0 + (full - 1) * TC);
  } else {
    for (int k = 0; k < full; ++k) f.template run<TR, TC>(r, C0 + k * TC);
    if constexpr (rem > 0) f.template run<TR, rem>(r, C0 + full * TC);
  }
}
template <int TR, int W, int K, class F>
TILE void rest_rows(const F& f, int r, int c, int n) {  // n < TR rows at r of one column block
  if constexpr (K > 0) {
    if (n == K) f.template run<K, W>(r, c);
    else rest_rows<TR, W, K - 1>(f, r, c, n);
  }
}
template <int TR, int W, class F>
TILE void col_tiles(const F& f, int c, int r0, int r1) {  // one column block of width W, all the rows
  int r = r0;
  if constexpr (W == 1) {  // never 1 x 1: a last row on its own joins the block before
    for (; r + TR < r1 - 1; r += TR) f.template run<TR, 1>(r, c);
    if (r1 - r == TR + 1) { f.template run<TR + 1, 1>(r, c); return; }
  }
  for (; r + TR <= r1; r += TR) f.template run<TR, W>(r, c);
  rest_rows<TR, W, TR - 1>(f, r, c, r1 - r);
}
template <int TR, int TC, int C0, int C1, int K, class F>
TILE void rest_rows_all(const F& f, int r, int n) {  // n < TR rows at r, all the columns
  if constexpr (K > 0) {
    if (n == K) row_tiles<K, TC, C0, C1>(f, r);
    else rest_rows_all<TR, TC, C0, C1, K - 1>(f, r, n);
  }
}
template <int TR, int TC, int C0, int C1, bool COLS_OUTER, class F>
TILE void cover(const F& f, int r0, int r1) {
  constexpr int C = C1 - C0, full = C / TC, rem = C % TC;
  if constexpr (C > 0) {
    if constexpr (COLS_OUTER) {
      for (int k = 0; k < full; ++k) col_tiles<TR, TC>(f, C0 + k * TC, r0, r1);
      if constexpr (rem > 0) col_tiles<TR, rem>(f, C0 + full * TC, r0, r1);
    } else {
      int r = r0;
      for (; r + TR <= r1; r += TR) row_tiles<TR, TC, C0, C1>(f, r);
      rest_rows_all<TR, TC, C0, C1, TR - 1>(f, r, r1 - r);
    }
  }
}
// the odd last row (examples or weight rows): columns [0, C0) in tiles of 1 x 4 (or 1 x C0 below
// 4), [C0, C1) one output each, as the first kernel
template <int C0, int C1, class F>
TILE void corner_row(const F& f, int r) {
  if constexpr (C0 > 0 && C0 < 4) f.template run<1, C0>(r, 0);
  else
    for (int c = 0; c + 4 <= C0; c += 4) f.template run<1, 4>(r, c);
  for (int c = C0; c < C1; ++c) f.template run<1, 1>(r, c);
}

// z[b][o] = bias[o] + sum_i h[b][i] W[o][i]: tiles of TB examples x TO outputs in registers
template <int IN, int OUT>
struct Fwd {
  const vf* __restrict h; const vf* __restrict W; const vf* __restrict bias; vf* __restrict z;
  template <int TB, int TO>
  TILE_RUN void run(int b, int o) const {
    vf acc[TB][TO];
    for (int t = 0; t < TB; ++t)
      for (int u = 0; u < TO; ++u) acc[t][u] = bias[o + u];
    for (int i = 0; i < IN; ++i) outer<TB, TO>(acc, h + b * IN + i, IN, W + o * IN + i, IN);
    for (int t = 0; t < TB; ++t)
      for (int u = 0; u < TO; ++u) z[(b + t) * OUT + o + u] = acc[t][u];
  }
};

template <int IN, int OUT>
static inline void forward(const vf* __restrict h, const vf* __restrict W, const vf* __restrict bias,
                           vf* __restrict z, int B) {
  // outputs outer: a tile's rows of W stay in L1 while every example passes
  Fwd<IN, OUT> f{h, W, bias, z};
  cover<FT_B, FT_O, 0, OUT, true>(f, 0, B & ~1);
  if (B & 1) corner_row<corner<OUT>(), OUT>(f, B - 1);
}

// dh[b][i] = sum_o dz[b][o] W[o][i]
template <int IN, int OUT>
struct Dh {
  const vf* __restrict dz; const vf* __restrict W; vf* __restrict dh;
  template <int TB, int TI>
  TILE_RUN void run(int b, int i) const {
    vf acc[TB][TI];
    for (int t = 0; t < TB; ++t)
      for (int u = 0; u < TI; ++u) acc[t][u] = vf{};
    for (int o = 0; o < OUT; ++o) outer<TB, TI>(acc, dz + b * OUT + o, OUT, W + o * IN + i, 1);
    for (int t = 0; t < TB; ++t)
      for (int u = 0; u < TI; ++u) dh[(b + t) * IN + i + u] = acc[t][u];
  }
};

template <int IN, int OUT>
static inline void backward_dh(const vf* __restrict dz, const vf* __restrict W, vf* __restrict dh, int B) {
  // inputs outer: a tile's columns of W stay in L1 while every example passes
  Dh<IN, OUT> f{dz, W, dh};
  cover<HT_B, HT_I, 0, IN, true>(f, 0, B & ~1);
  if (B & 1) corner_row<corner<IN>(), IN>(f, B - 1);
}

// gW[o][i] = sum_b dz[b][o] h[b][i]
template <int IN, int OUT>
struct Dw {
  const vf* __restrict dz; const vf* __restrict h; vf* __restrict gW; int B;
  template <int TO, int TI>
  TILE_RUN void run(int o, int i) const {
    vf acc[TO][TI];
    for (int t = 0; t < TO; ++t)
      for (int u = 0; u < TI; ++u) acc[t][u] = vf{};
    for (int b = 0; b < B; ++b) outer<TO, TI>(acc, dz + b * OUT + o, 1, h + b * IN + i, 1);
    for (int t = 0; t < TO; ++t)
      for (int u = 0; u < TI; ++u) gW[(o + t) * IN + i + u] = acc[t][u];
  }
};

// the tiles of two or more outputs, out of line: inlined into the step, their register allocation
// spilled each tile's kept operands (``outer``'s KEEP) to the stack at every example. (The corner's
// one-output tiles stay in the step: whether they fuse multiply and add is the compiler's choice
// there, kept as it was.)
template <int IN, int OUT>
static __attribute__((noinline)) void dw_tiles(const vf* __restrict dz, const vf* __restrict h,
                                               vf* __restrict gW, int B) {
  // outputs outer: a tile's columns of dz stay in registers' reach while h passes
  Dw<IN, OUT> f{dz, h, gW, B};
  cover<WT_O, WT_I, 0, IN, false>(f, 0, OUT & ~1);
}

template <int IN, int OUT>
static inline void backward_dw(const vf* __restrict dz, const vf* __restrict h, vf* __restrict gW,
                               vf* __restrict gb, int B) {
  dw_tiles<IN, OUT>(dz, h, gW, B);
  if constexpr (OUT & 1) corner_row<corner<IN>(), IN>(Dw<IN, OUT>{dz, h, gW, B}, OUT - 1);
  // the bias: 8 outputs' sums side by side (8 chains of adds, each over b in order, not one after another)
  int o2 = 0;
  for (; o2 + 8 <= OUT; o2 += 8) {
    vf s[8] = {};
    for (int b = 0; b < B; ++b)
      for (int j = 0; j < 8; ++j) s[j] += dz[b * OUT + o2 + j];
    for (int j = 0; j < 8; ++j) gb[o2 + j] = s[j];
  }
  for (; o2 < OUT; ++o2) {
    vf s = vf{};
    for (int b = 0; b < B; ++b) s += dz[b * OUT + o2];
    gb[o2] = s;
  }
}

struct Adam { vf a; vf om1; vf om2; vf eps; };

extern "C" {
struct Args {
  int32_t n_chunks, n_threads, n, batch, train;
  int32_t _pad;
  float* params; float* m; float* v;     // (chunks, P, LANES)
  const float* x; const float* y;        // the data: (rows, n, in), (rows, n, out)
  const int32_t* rows;                   // (chunks, LANES): the data row of each lane
  const int32_t* order;                  // (chunks, LANES, n): each lane's example order (train)
  const float* lam;                      // (chunks, slots, LANES)
  int32_t* active;                       // (chunks, LANES): -1 trains, 0 frozen (updated)
  float* stats;                          // (chunks, NSTAT, LANES), added to
  int32_t* failed;                       // (chunks, LANES): the step a lane turned non-finite (-1)
  float* failval;                        // (chunks, LANES): its batch's mean data loss then
  float* per_example;                    // eval: (chunks, 2, n, LANES) data loss and correct
  const double* hyper;                   // train: lr, beta_1, beta_2, epsilon, t (steps before)
};
}
"""
