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
#: measured on a 2-core AMD EPYC (AVX2): 2x4, 2x4, 2x4 best of those tried (4x2, 3x4, 4x3)
TILES = "#define FT_B 2\n#define FT_O 4\n#define HT_B 2\n#define HT_I 4\n#define WT_O 2\n#define WT_I 4"

RUNTIME = r"""
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
static inline vf v_log(vf x) {  // x > 0 and normal
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
  return m + y + fe * 0.693359375f;
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

// z[b][o] = bias[o] + sum_i h[b][i] W[o][i], tiles of TB examples x TO outputs in registers
template <int IN, int OUT, int TB, int TO>
TILE void tile_fwd(const vf* __restrict h, const vf* __restrict W, const vf* __restrict bias,
                   vf* __restrict z, int b, int o) {
  vf acc[TB][TO];
  for (int t = 0; t < TB; ++t)
    for (int u = 0; u < TO; ++u) acc[t][u] = bias[o + u];
  for (int i = 0; i < IN; ++i) outer<TB, TO>(acc, h + b * IN + i, IN, W + o * IN + i, IN);
  for (int t = 0; t < TB; ++t)
    for (int u = 0; u < TO; ++u) z[(b + t) * OUT + o + u] = acc[t][u];
}

template <int IN, int OUT>
static inline void forward(const vf* __restrict h, const vf* __restrict W, const vf* __restrict bias,
                           vf* __restrict z, int B) {
  // outputs outer: a tile's rows of W stay in L1 while every example passes
  constexpr int TO = OUT >= FT_O ? FT_O : OUT;
  int o = 0;
  for (; o + TO <= OUT; o += TO) {
    int b = 0;
    for (; b + FT_B <= B; b += FT_B) tile_fwd<IN, OUT, FT_B, TO>(h, W, bias, z, b, o);
    for (; b < B; ++b) tile_fwd<IN, OUT, 1, TO>(h, W, bias, z, b, o);
  }
  for (; o < OUT; ++o) {
    int b = 0;
    for (; b + FT_B <= B; b += FT_B) tile_fwd<IN, OUT, FT_B, 1>(h, W, bias, z, b, o);
    for (; b < B; ++b) tile_fwd<IN, OUT, 1, 1>(h, W, bias, z, b, o);
  }
}

// dh[b][i] = sum_o dz[b][o] W[o][i]
template <int IN, int OUT, int TB, int TI>
TILE void tile_dh(const vf* __restrict dz, const vf* __restrict W, vf* __restrict dh, int b, int i) {
  vf acc[TB][TI];
  for (int t = 0; t < TB; ++t)
    for (int u = 0; u < TI; ++u) acc[t][u] = vf{};
  for (int o = 0; o < OUT; ++o) outer<TB, TI>(acc, dz + b * OUT + o, OUT, W + o * IN + i, 1);
  for (int t = 0; t < TB; ++t)
    for (int u = 0; u < TI; ++u) dh[(b + t) * IN + i + u] = acc[t][u];
}

template <int IN, int OUT>
static inline void backward_dh(const vf* __restrict dz, const vf* __restrict W, vf* __restrict dh, int B) {
  // inputs outer: a tile's columns of W stay in L1 while every example passes
  constexpr int TI = IN >= HT_I ? HT_I : IN;
  int i = 0;
  for (; i + TI <= IN; i += TI) {
    int b = 0;
    for (; b + HT_B <= B; b += HT_B) tile_dh<IN, OUT, HT_B, TI>(dz, W, dh, b, i);
    for (; b < B; ++b) tile_dh<IN, OUT, 1, TI>(dz, W, dh, b, i);
  }
  for (; i < IN; ++i) {
    int b = 0;
    for (; b + HT_B <= B; b += HT_B) tile_dh<IN, OUT, HT_B, 1>(dz, W, dh, b, i);
    for (; b < B; ++b) tile_dh<IN, OUT, 1, 1>(dz, W, dh, b, i);
  }
}

// gW[o][i] = sum_b dz[b][o] h[b][i] (i == IN: the bias, h = 1)
template <int IN, int OUT, int TO, int TI>
TILE void tile_dw(const vf* __restrict dz, const vf* __restrict h, vf* __restrict gW, int B, int o, int i) {
  vf acc[TO][TI];
  for (int t = 0; t < TO; ++t)
    for (int u = 0; u < TI; ++u) acc[t][u] = vf{};
  for (int b = 0; b < B; ++b) outer<TO, TI>(acc, dz + b * OUT + o, 1, h + b * IN + i, 1);
  for (int t = 0; t < TO; ++t)
    for (int u = 0; u < TI; ++u) gW[(o + t) * IN + i + u] = acc[t][u];
}

template <int IN, int OUT>
static inline void backward_dw(const vf* __restrict dz, const vf* __restrict h, vf* __restrict gW,
                               vf* __restrict gb, int B) {
  constexpr int TI = IN >= WT_I ? WT_I : IN;
  constexpr int TO = OUT >= WT_O ? WT_O : 1;
  int o = 0;
  for (; o + TO <= OUT; o += TO) {
    int i = 0;
    for (; i + TI <= IN; i += TI) tile_dw<IN, OUT, TO, TI>(dz, h, gW, B, o, i);
    for (; i < IN; ++i) tile_dw<IN, OUT, TO, 1>(dz, h, gW, B, o, i);
  }
  for (; o < OUT; ++o) {
    int i = 0;
    for (; i + TI <= IN; i += TI) tile_dw<IN, OUT, 1, TI>(dz, h, gW, B, o, i);
    for (; i < IN; ++i) tile_dw<IN, OUT, 1, 1>(dz, h, gW, B, o, i);
  }
  for (int o2 = 0; o2 < OUT; ++o2) {
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
