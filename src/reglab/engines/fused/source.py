"""The fused engine's C++ source for one architecture (``Arch``), written from the term tables.

Models sit in SIMD lanes: every value of the step is a ``vf``, one model per lane, so a product
``z[b][o] = bias[o] + sum_i h[b][i] W[o][i]`` is a chain of lane-wise multiply-adds and a model's
numbers never depend on the lanes beside it (nor on the chunk it sits in, the thread that runs
its chunk, or how many models there are: unused lanes are zeros). One call runs a whole epoch of
a chunk of ``LANES`` models with its parameters, Adam state and activations in cache:

    forward     z = h W^T + b,  y = act(z)             (register tiles of examples x outputs)
    loss        l = mean_o loss(y_L, t),  dy_L = dl/dy_L / B
    backward    g_l = dy_l + sum_s lam_s f_s'(y_l) / B  (activity penalties, Keras's 1/B)
                dz = act'(y) g,  dh = dz W,  [dW | db] = dz^T [h, 1]
    update      g += sum_s lam_s f_s'(w);  Keras Adam:  m += (g - m)(1 - b1),
                v += (g^2 - v)(1 - b2),  w -= alpha_t m / (sqrt(v) + eps)

fused layer by layer (a layer's update follows its ``dh``, so no gradient buffer is kept). A
model whose data loss turns non-finite in a step is frozen from that step on (its lane is not
updated), with the step and value recorded, as the eager engine's per-model check does.
"""

from __future__ import annotations

from dataclasses import dataclass

from .runtime import RUNTIME, TILES
from .terms import ACTIVATIONS, CLIPS, DERIVS_NONNEG, LOSSES, NONNEG, PENALTIES

__all__ = ["Arch", "source", "VERSION"]


#: the kernel's version: part of every history it trains (``History.meta["engine"]``) and of the
#: build cache's key; raise it whenever the generated arithmetic changes (2: the kernel's log
#: keeps NaN, so a model gone NaN fails as on the eager engine; finite values' bits unchanged)
VERSION = 2


@dataclass(frozen=True)
class Arch:
    """What the generated code is specialized for. ``widths``: input width, then each layer's
    units; ``acts``: each layer's activation; ``param_slots``: ``(layer, "W" or "b", term)``;
    ``act_slots``: ``(layer, term)`` on a layer's output; ``lanes``: models per chunk."""

    widths: tuple[int, ...]
    acts: tuple[str, ...]
    param_slots: tuple[tuple[int, str, str], ...]
    act_slots: tuple[tuple[int, str], ...]
    loss: str
    accuracy: bool
    lanes: int = 8

    @property
    def n_params(self) -> int:
        """Parameters of one model: each layer's ``W (out, in)`` then ``b (out)``."""
        w = self.widths
        return sum(w[i + 1] * w[i] + w[i + 1] for i in range(len(self.acts)))

    def offsets(self) -> list[tuple[int, int]]:
        """Each layer's ``(W offset, b offset)`` in a model's parameters."""
        out, o, w = [], 0, self.widths
        for i in range(len(self.acts)):
            out.append((o, o + w[i + 1] * w[i]))
            o += w[i + 1] * w[i] + w[i + 1]
        return out

    @property
    def n_stats(self) -> int:
        """Per lane: data loss sum, correct sum, then one sum per slot (params, then activity)."""
        return 2 + len(self.param_slots) + len(self.act_slots)




def _term_functions() -> str:
    """Each table term as a C++ function template (over ``vf`` and ``double``)."""
    out = []
    for name, t in ACTIVATIONS.items():
        out.append(f"template <class T> static inline T act_{name}(T z) {{ return {t.value}; }}")
        out.append(f"template <class T> static inline T dact_{name}(T y, T g) {{ return {t.deriv}; }}")
    for name, t in PENALTIES.items():
        out.append(f"template <class T> static inline T pen_{name}(T x) {{ return {t.value}; }}")
        out.append(f"template <class T> static inline T dpen_{name}(T x) {{ return {t.deriv}; }}")
    for name, deriv in DERIVS_NONNEG.items():
        out.append(f"template <class T> static inline T dpen0_{name}(T x) {{ return {deriv}; }}")
    for name, t in LOSSES.items():
        clip = CLIPS.get(name)
        q = f"T q = sel(p < {clip!r}f, p * 0 + {clip!r}f, sel(p > 1 - {clip!r}f, p * 0 + (1 - {clip!r}f), p));" if clip \
            else "T q = p;"
        out.append(f"template <class T> static inline T loss_{name}(T p, T y) {{ {q} return {t.value}; }}")
        out.append(f"template <class T> static inline T dloss_{name}(T p, T y) {{ {q} return {t.deriv}; }}")
    return "\n".join(out)


def _check_functions() -> str:
    """``term_check``: every table term evaluated elementwise in float32 (the kernel's vectors) or
    float64 (scalar), for the tests that hold the kernel to its Python definitions."""
    kinds = ([(f"act_{n}", 1) for n in ACTIVATIONS] + [(f"dact_{n}", 2) for n in ACTIVATIONS] +
             [(f"pen_{n}", 1) for n in PENALTIES] + [(f"dpen_{n}", 1) for n in PENALTIES] +
             [(f"loss_{n}", 2) for n in LOSSES] + [(f"dloss_{n}", 2) for n in LOSSES] +
             [(f"dpen0_{n}", 1) for n in DERIVS_NONNEG])
    cases32, cases64 = [], []
    for k, (fn, arity) in enumerate(kinds):
        args32 = ", ".join(f"((const vf*)a{j})[i]" for j in range(arity))
        args64 = ", ".join(f"b{j}[i]" for j in range(arity))
        cases32.append(f"    case {k}: for (int64_t i = 0; i < n / LANES; ++i) ((vf*)o)[i] = {fn}<vf>({args32}); return 0;")
        cases64.append(f"    case {k}: for (int64_t i = 0; i < n; ++i) o64[i] = {fn}<double>({args64}); return 0;")
    names = " ".join(fn for fn, _ in kinds)
    return f"""
// the terms, in the order: {names}
extern "C" int term_check32(int k, int64_t n, const float* a0, const float* a1, float* o) {{
  switch (k) {{
{chr(10).join(cases32)}
  }}
  return -1;
}}
extern "C" int term_check64(int k, int64_t n, const double* b0, const double* b1, double* o64) {{
  switch (k) {{
{chr(10).join(cases64)}
  }}
  return -1;
}}
extern "C" int lanes() {{ return LANES; }}
"""


def term_order() -> list[str]:
    """The term names in ``term_check``'s numbering."""
    return ([f"act_{n}" for n in ACTIVATIONS] + [f"dact_{n}" for n in ACTIVATIONS] + [f"pen_{n}" for n in PENALTIES] +
            [f"dpen_{n}" for n in PENALTIES] + [f"loss_{n}" for n in LOSSES] + [f"dloss_{n}" for n in LOSSES] +
            [f"dpen0_{n}" for n in DERIVS_NONNEG])


def _forward_code(arch: Arch) -> str:
    """The forward pass of a batch ``B`` from ``h0`` into ``y[l]``, with the activity penalties'
    sums (``af[s]``, each slot's f summed over the batch)."""
    w, lines = arch.widths, []
    offs = arch.offsets()
    for l, act in enumerate(arch.acts):
        src = "h0" if l == 0 else f"y{l - 1}"
        ow, ob = offs[l]
        lines.append(f"    forward<{w[l]}, {w[l + 1]}>({src}, P + {ow}, P + {ob}, y{l}, B);")
        slots = [(s, term) for s, (sl, term) in enumerate(arch.act_slots) if sl == l]
        if act != "linear" and len(slots) == 1 and slots[0][1] == "abs":
            # one pass: the activation, and the sum of |y| (a chain of adds, in order) beside it; only
            # for a term without a product, whose loop the compiler fuses nothing in either way
            s, term = slots[0]
            lines.append(f"    {{ vf a = vf{{}}; for (int k = 0; k < B * {w[l + 1]}; ++k) {{ vf z = y{l}[k]; vf y = act_{act}<vf>(z); "
                         f"y{l}[k] = y; a += pen_{term}<vf>(y); }} af[{s}] += a; }}")
            continue
        if act != "linear":
            lines.append(f"    for (int k = 0; k < B * {w[l + 1]}; ++k) {{ vf z = y{l}[k]; y{l}[k] = act_{act}<vf>(z); }}")
        for s, term in slots:
            lines.append(f"    {{ vf a = vf{{}}; for (int k = 0; k < B * {w[l + 1]}; ++k) a += pen_{term}<vf>(y{l}[k]); af[{s}] += a; }}")
    return "\n".join(lines)


def _loss_code(arch: Arch, train: bool) -> str:
    """Per example b: its data loss (mean over outputs) and correct (binary accuracy); in
    training, ``dy`` of the last layer (divided by the batch)."""
    L = len(arch.acts) - 1
    out = arch.widths[-1]
    loss = arch.loss
    lines = ["    for (int b = 0; b < B; ++b) {",
             "      vf lsum = vf{}, hits = vf{};",
             f"      for (int o = 0; o < {out}; ++o) {{",
             f"        vf p = y{L}[b * {out} + o], t = yv[b * {out} + o];",
             f"        lsum += loss_{loss}<vf>(p, t);"]
    if arch.accuracy:
        lines.append("        hits += sel((p > 0.5f) == (t > 0.5f), splat(1.0f), vf{});")
    if train:
        lines.append(f"        dy{L}[b * {out} + o] = dloss_{loss}<vf>(p, t) / {float(out)!r}f / (float)B;")
    lines += ["      }",
              f"      vf lb = lsum / {float(out)!r}f, cb = hits / {float(out)!r}f;",
              "      PER_EXAMPLE",
              "    }"]
    return "\n".join(lines)


def _dz_code(arch: Arch, l: int) -> str:
    """Layer ``l``'s ``g = dy + activity derivatives; dz = act'(y) g`` (in place in ``dy``), each
    slot's ``lam * invB`` once per pass; on an output never below zero (``NONNEG``) a derivative's
    shorter form where it has one (``DERIVS_NONNEG``: the same values)."""
    act, n_p, OUT = arch.acts[l], len(arch.param_slots), arch.widths[l + 1]
    act_terms = [(s, term) for s, (sl, term) in enumerate(arch.act_slots) if sl == l]
    consts = "".join(f"const vf c{s} = lam[{n_p + s}] * invB; " for s, _ in act_terms)
    dpen = {term: f"dpen0_{term}" if act in NONNEG and term in DERIVS_NONNEG else f"dpen_{term}" for _, term in act_terms}
    extra = "".join(f" + c{s} * {dpen[term]}<vf>(yy)" for s, term in act_terms)
    return (f"    {{ {consts}for (int k = 0; k < B * {OUT}; ++k) {{ vf yy = y{l}[k]; vf g = dy{l}[k]{extra}; "
            f"dy{l}[k] = dact_{act}<vf>(yy, g); }} }}")


def _backward_code(arch: Arch) -> str:
    """The backward pass with each layer's update fused in (see the module docstring). A layer's
    ``dz`` pass follows the ``dh`` that writes its ``dy`` (while that is in cache; the ``dW`` and
    update between take neither)."""
    w, offs = arch.widths, arch.offsets()
    nl = len(arch.acts)
    lines = [_dz_code(arch, nl - 1)]
    for l in range(nl - 1, -1, -1):
        IN, OUT = w[l], w[l + 1]
        ow, ob = offs[l]
        src = "h0" if l == 0 else f"y{l - 1}"
        if l > 0:
            lines.append(f"    backward_dh<{IN}, {OUT}>(dy{l}, P + {ow}, dy{l - 1}, B);")
            lines.append(_dz_code(arch, l - 1))
        lines.append(f"    backward_dw<{IN}, {OUT}>(dy{l}, {src}, gw, gw + {OUT * IN}, B);")
        for part, off, size in (("W", ow, OUT * IN), ("b", ob, OUT)):
            slots = [(s, term) for s, (sl, pt, term) in enumerate(arch.param_slots) if sl == l and pt == part]
            goff = 0 if part == "W" else OUT * IN
            sums = "".join(f" vf f{s} = vf{{}};" for s, _ in slots)
            pen = "".join(f" g += lam[{s}] * dpen_{term}<vf>(x); f{s} += pen_{term}<vf>(x);" for s, term in slots)
            done = "".join(f" st[{2 + s}] += fb * f{s};" for s, _ in slots)
            lines.append(f"    {{{sums}\n      for (int k = 0; k < {size}; ++k) {{ vf x = P[{off} + k]; vf g = gw[{goff} + k];{pen}\n"
                         f"        vf mm = M[{off} + k], vv = V[{off} + k];\n"
                         f"        mm += (g - mm) * ad.om1; vv += (g * g - vv) * ad.om2;\n"
                         f"        vf xn = x - ad.a * mm / (v_sqrt(vv) + ad.eps);\n"
                         f"        P[{off} + k] = sel(act, xn, x); M[{off} + k] = sel(act, mm, M[{off} + k]); V[{off} + k] = sel(act, vv, V[{off} + k]); }}\n"
                         f"     {done} }}")
    return "\n".join(lines)


def _views(arch: Arch, name: str, base: str) -> str:
    """Each layer's ``(B, units)`` block of a scratch buffer: ``{name}{l}``."""
    w = arch.widths
    return "\n".join(f"  vf* {name}{l} = {base} + S.bmax * {sum(w[1:l + 1])};" for l in range(len(arch.acts)))


def _gather(arch: Arch, index: str) -> str:
    """Each lane's examples (``index`` of example ``b``) into the batch buffers ``h0``, ``yv``."""
    w0, wl = arch.widths[0], arch.widths[-1]
    return f"""    for (int b = 0; b < B; ++b) {{
      for (int k = 0; k < LANES; ++k) {{
        int64_t j = {index};
        const float* xr = A->x + ((int64_t)rows[k] * A->n + j) * {w0};
        const float* yr = A->y + ((int64_t)rows[k] * A->n + j) * {wl};
        for (int i = 0; i < {w0}; ++i) h0[b * {w0} + i][k] = xr[i];
        for (int i = 0; i < {wl}; ++i) yv[b * {wl} + i][k] = yr[i];
      }}
    }}"""


def _scratch_code(arch: Arch) -> str:
    w, nl = arch.widths, len(arch.acts)
    units = sum(w[1:])
    return f"""static constexpr int NP = {arch.n_params};
static constexpr int NS = {arch.n_stats};
static constexpr int NSLOT = {len(arch.param_slots) + len(arch.act_slots)};
static constexpr int BEVAL = 32;  // examples per pass in evaluation

struct Scratch {{
  int bmax;
  std::vector<vf> h0, yv, buf, dbuf, gw;
  explicit Scratch(int b) : bmax(b), h0(b * {w[0]}), yv(b * {w[-1]}), buf(b * {units}), dbuf(b * {units}),
                            gw({max(w[i + 1] * (w[i] + 1) for i in range(nl))}) {{}}
}};"""


def _train_chunk_code(arch: Arch) -> str:
    """One epoch of one chunk: per step gather, forward, loss, the finite check, backward and
    update; the step's sums into ``stats``."""
    n_act, n_p = len(arch.act_slots), len(arch.param_slots)
    return f"""static void train_chunk(const Args* A, int c, Scratch& S) {{
  vf* P = (vf*)A->params + (int64_t)c * NP;
  vf* M = (vf*)A->m + (int64_t)c * NP;
  vf* V = (vf*)A->v + (int64_t)c * NP;
  const vf* lam = (const vf*)A->lam + (int64_t)c * NSLOT;
  vf* st = (vf*)A->stats + (int64_t)c * NS;
  const int32_t* rows = A->rows + (int64_t)c * LANES;
  const int32_t* order = A->order + (int64_t)c * LANES * A->n;
  int32_t* failed = A->failed + (int64_t)c * LANES;
  float* failval = A->failval + (int64_t)c * LANES;
  vi act; std::memcpy(&act, A->active + (int64_t)c * LANES, sizeof act);
  vf* h0 = S.h0.data(); vf* yv = S.yv.data(); vf* buf = S.buf.data(); vf* dbuf = S.dbuf.data(); vf* gw = S.gw.data();
{_views(arch, "y", "buf")}
{_views(arch, "dy", "dbuf")}
  const double lr = A->hyper[0], b1 = A->hyper[1], b2 = A->hyper[2], eps = A->hyper[3], t0 = A->hyper[4];
  int step = 0;
  for (int s = 0; s < A->n; s += A->batch, ++step) {{
    const int B = A->n - s < A->batch ? A->n - s : A->batch;
    const float invB = 1.0f / (float)B;
    const float fb = (float)B;
    vf af[{max(n_act, 1)}] = {{}};
{_gather(arch, "order[(int64_t)k * A->n + s + b]")}
{_forward_code(arch)}
    vf dsum = vf{{}}, csum = vf{{}};
{_loss_code(arch, True).replace("PER_EXAMPLE", "dsum += lb; csum += cb;")}
    vi fin = (dsum - dsum) == 0;
    vi newly = act & ~fin;
    for (int k = 0; k < LANES; ++k)
      if (newly[k]) {{ failed[k] = step; failval[k] = dsum[k] / (float)B; }}
    act = act & fin;
    st[0] += dsum; st[1] += csum;
    for (int q = 0; q < {n_act}; ++q) st[2 + {n_p} + q] += af[q];
    int64_t t = (int64_t)t0 + step + 1;
    Adam ad;
    ad.a = splat((float)(lr * __builtin_sqrt(1 - ipow(b2, t)) / (1 - ipow(b1, t))));
    ad.om1 = splat((float)(1 - b1)); ad.om2 = splat((float)(1 - b2)); ad.eps = splat((float)eps);
{_backward_code(arch)}
  }}
  std::memcpy(A->active + (int64_t)c * LANES, &act, sizeof act);
}}"""


def _eval_chunk_code(arch: Arch) -> str:
    """All of the data through one chunk, in passes of ``BEVAL`` examples: the sums and each
    example's loss and correct; the parameter penalties' sums."""
    w = arch.widths
    n_act, n_p = len(arch.act_slots), len(arch.param_slots)
    offs = arch.offsets()
    param_f = "\n".join(
        f"  {{ vf f = vf{{}}; for (int k = 0; k < {w[sl + 1] * w[sl] if pt == 'W' else w[sl + 1]}; ++k) "
        f"f += pen_{term}<vf>(P[{offs[sl][0 if pt == 'W' else 1]} + k]); st[{2 + s}] += f; }}"
        for s, (sl, pt, term) in enumerate(arch.param_slots))
    per_eval = "dsum += lb; csum += cb; if (pe) { pe[(int64_t)(s + b)] = lb; pe[(int64_t)A->n + s + b] = cb; }"
    return f"""static void eval_chunk(const Args* A, int c, Scratch& S) {{
  const vf* P = (const vf*)A->params + (int64_t)c * NP;
  vf* st = (vf*)A->stats + (int64_t)c * NS;
  const int32_t* rows = A->rows + (int64_t)c * LANES;
  vf* pe = A->per_example ? (vf*)A->per_example + (int64_t)c * 2 * A->n : nullptr;  // null: sums only
  vf* h0 = S.h0.data(); vf* yv = S.yv.data(); vf* buf = S.buf.data();
{_views(arch, "y", "buf")}
  vf af[{max(n_act, 1)}] = {{}};
  vf dsum = vf{{}}, csum = vf{{}};
  for (int s = 0; s < A->n; s += BEVAL) {{
    const int B = A->n - s < BEVAL ? A->n - s : BEVAL;
{_gather(arch, "s + b")}
{_forward_code(arch)}
{_loss_code(arch, False).replace("PER_EXAMPLE", per_eval)}
  }}
  st[0] += dsum; st[1] += csum;
  for (int q = 0; q < {n_act}; ++q) st[2 + {n_p} + q] += af[q];
{param_f}
}}"""


#: the entry points: chunks handed to threads as they come free (each thread claims the next
#: unclaimed chunk: a thread slowed by another process on its core leaves more to the other; a
#: chunk's numbers do not depend on the thread that runs it), denormals flushed to zero in each
#: (FTZ and DAZ), as the eager engines train (``reglab.training.denormals``)
_ENTRY = """template <class F>
static void over_chunks(const Args* A, F f) {
  int T = A->n_threads < A->n_chunks ? A->n_threads : A->n_chunks;
  if (T < 1) T = 1;
  std::atomic<int> next{0};
  auto work = [&](int) {
    unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040);
    Scratch S(A->batch > BEVAL ? A->batch : BEVAL);
    for (int c; (c = next.fetch_add(1, std::memory_order_relaxed)) < A->n_chunks;) f(A, c, S);
    _mm_setcsr(csr);
  };
  std::vector<std::thread> th;
  for (int t = 1; t < T; ++t) th.emplace_back(work, t);
  work(0);
  for (auto& x : th) x.join();
}

extern "C" int train_epoch(const Args* A) {
  if (A->batch < 1) return -1;
  over_chunks(A, train_chunk);
  return 0;
}
extern "C" int evaluate(const Args* A) {
  over_chunks(A, eval_chunk);
  return 0;
}
"""


def source(arch: Arch) -> str:
    """The C++ source of ``arch``'s kernel: ``train_epoch(Args*)``, ``evaluate(Args*)`` and the
    term checks."""
    return "\n".join([f"// generated by reglab.engines.fused.source (version {VERSION}); do not edit",
                      f"#define LANES {arch.lanes}", TILES, RUNTIME, _term_functions(), _check_functions(),
                      _scratch_code(arch), _train_chunk_code(arch), _eval_chunk_code(arch), _ENTRY,
                      f'extern "C" int version() {{ return {VERSION}; }}', ""])
