"""The floor under fit_many's time per model: program 6's batched matrix products and Adam alone.

A 200-epoch run of the lecture MLP (2 -> 5 x 32 relu -> 1; 225 training points in batches of 20,
75 validation points each epoch) needs, per model, the products of 12 training steps (forward,
[dW | db] and dh per layer) and one validation forward per epoch, and one Adam update of its 4,416
parameters per step. This script times exactly those, for M models at once, with the shapes and
kernels the Dense-stack engine uses (``torch.bmm`` on (M, B, in + 1) x (M, in + 1, out) blocks;
``torch._fused_adamw_`` on the (M, P) buffer), on warm inputs: what no eager implementation of the
run can go below, before any activation, derivative, penalty, loss or bookkeeping pass.

    python benchmarks/bench_floor.py [M ...]      (default 256 1024; 1 and 2 threads)

Below the eager floor is the physical one: program 6's arithmetic (1.13 GFLOP per model-run,
``bench_vs_keras.GFLOP_PER_RUN``; validation not counted) at this CPU's peak of fused
multiply-adds, measured here by a compiled loop of independent vector FMAs (built like the fused
engine's kernel, ``reglab.engines.fused.build``) on each core. The fused engine runs the same
arithmetic in one compiled loop nest; its distance from this figure is what is left to win.
"""

from __future__ import annotations

import platform
import sys
import time

import torch

B, VAL, STEPS, EPOCHS, P = 20, 75, 12, 200, 4416


def _time(fn, n):
    for _ in range(5):
        fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def floor(m: int) -> dict[str, float]:
    """Seconds per model-run of the products (training, validation) and of Adam."""
    def r(*shape):
        return torch.randn(*shape)

    # forward: [x, 1] (M, B, 3) and 4 x [h, 1] (M, B, 33) times [W | b]^T; the 1-unit output layer
    # is an element-wise product and sum in the engine (not timed)
    fwd = [(r(m, B, 3), r(m, 3, 32))] + [(r(m, B, 33), r(m, 33, 32)) for _ in range(4)]
    # backward: [dW | db] = dz^T [h, 1] for the 5 hidden layers, dh = dz W for 4 of them
    bwd = [(r(m, 32, B), r(m, B, 3))] + [(r(m, 32, B), r(m, B, 33)) for _ in range(4)] + [
        (r(m, B, 32), r(m, 32, 32)) for _ in range(4)]
    val = [(r(m, VAL, 3), r(m, 3, 32))] + [(r(m, VAL, 33), r(m, 33, 32)) for _ in range(4)]
    # every product writes into its own buffer, made once (as the engine's planned buffers)
    train = [(a, b, torch.empty(m, a.shape[1], b.shape[2])) for a, b in fwd + bwd]
    vals = [(a, b, torch.empty(m, a.shape[1], b.shape[2])) for a, b in val]
    train_step = _time(lambda: [torch.bmm(a, b, out=c) for a, b, c in train], 30)
    val_pass = _time(lambda: [torch.bmm(a, b, out=c) for a, b, c in vals], 30)
    p, g, m1, m2 = (torch.randn(m, P).abs() * 0.01 for _ in range(4))
    step = [torch.tensor(1.0)]

    def adam():
        torch._fused_adamw_([p], [g], [m1], [m2], [], step, amsgrad=False, lr=1e-3, beta1=0.9, beta2=0.999,
                            weight_decay=0.0, eps=1e-7, maximize=False, grad_scale=None, found_inf=None)

    adam_step = _time(adam, 30)
    per = 1.0 / m
    return {"products": (train_step * STEPS * EPOCHS + val_pass * EPOCHS) * per,
            "adam": adam_step * STEPS * EPOCHS * per}


_PEAK = r"""
#include <cstdint>
typedef float vf __attribute__((vector_size(32)));
extern "C" float fma_loop(int64_t n) {
  vf a[12], m = vf{} + 0.999999f, c = vf{} + 1e-7f;
  for (int k = 0; k < 12; ++k) a[k] = vf{} + (float)k;
  for (int64_t i = 0; i < n; ++i)
    for (int k = 0; k < 12; ++k) a[k] = a[k] * m + c;
  float s = 0;
  for (int k = 0; k < 12; ++k) s += a[k][0];
  return s;
}
"""


def fma_peak() -> float | None:
    """This core's measured float32 FMA throughput (FLOP/s: 12 independent 8-wide chains), or
    None where no kernel builds."""
    import ctypes

    from reglab.engines.fused.build import library

    lib, why = library(_PEAK)
    if lib is None:
        print(f"no compiled peak: {why}")
        return None
    lib.fma_loop.argtypes, lib.fma_loop.restype = [ctypes.c_int64], ctypes.c_float
    n = 20_000_000
    best = min(_time(lambda: lib.fma_loop(n), 1) for _ in range(5))
    return n * 12 * 8 * 2 / best


def main():
    ms = [int(a) for a in sys.argv[1:]] or [256, 1024]
    peak = fma_peak()
    if peak:
        gflop = 3 * 8384 * 225 * 200 / 1e9
        print(f"measured FMA peak: {peak / 1e9:.1f} GFLOP/s per core; program 6's {gflop:.2f} GFLOP per model-run "
              f"there: {gflop / (peak / 1e9) * 1e3:.1f} ms per model on one core, half that on two")
    print(f"machine: {platform.machine()}, torch {torch.__version__}; per model-run of program 6 "
          f"({EPOCHS} epochs x {STEPS} steps of {B} + {VAL} validation points)")
    print("| M | threads | products (ms) | Adam (ms) | sum (ms) |")
    print("|---|---|---|---|---|")
    for m in ms:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            f = floor(m)
            print(f"| {m} | {threads} | {f['products'] * 1e3:.1f} | {f['adam'] * 1e3:.1f} | "
                  f"{(f['products'] + f['adam']) * 1e3:.1f} |", flush=True)


if __name__ == "__main__":
    main()
