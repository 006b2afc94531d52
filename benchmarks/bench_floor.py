"""The floor under fit_many's time per model: program 6's batched matrix products and Adam alone.

A 200-epoch run of the lecture MLP (2 -> 5 x 32 relu -> 1; 225 training points in batches of 20,
75 validation points each epoch) needs, per model, the products of 12 training steps (forward,
[dW | db] and dh per layer) and one validation forward per epoch, and one Adam update of its 4,416
parameters per step. This script times exactly those, for M models at once, with the shapes and
kernels the Dense-stack engine uses (``torch.bmm`` on (M, B, in + 1) x (M, in + 1, out) blocks;
``torch._fused_adamw_`` on the (M, P) buffer), on warm inputs: what no eager implementation of the
run can go below, before any activation, derivative, penalty, loss or bookkeeping pass.

    python benchmarks/bench_floor.py [M ...]      (default 256 1024; 1 and 2 threads)
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


def main():
    ms = [int(a) for a in sys.argv[1:]] or [256, 1024]
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
