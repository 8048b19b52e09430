#!/usr/bin/env python3
"""Golden fixture for `train::optim::Adam`: three steps of torch.optim.Adam and torch.optim.AdamW.

The problem is the one `three_steps_match_torch_adam` (crates/train/src/optim.rs) sets up:
p = [1, -0.5], f(p) = sum((p - target)^2) / 2 so that the gradient is p - target, lr = 0.1,
betas (0.9, 0.999), eps = 1e-8, three times (zero_grad; f(p).backward(); step). It is run
without weight decay and target 0 (the test's original settings), and with Adam's L2 weight
decay (added to the gradient) and AdamW's decoupled weight decay, both at target 0.25: Adam is
invariant to rescaling a coordinate's gradients, so with target 0 the L2 term, which turns the
gradient p into (1 + wd) p, would change nothing but the effect of eps. Each case runs in
float64 (the reference the test compares with) and in float32 (what our optimizer computes in;
recorded to show how far float32 itself is from float64).

Run from the repository root:

    .venv/bin/python scripts/golden/optim.py

It rewrites crates/train/tests/fixtures/adam_three_steps.json, which is committed so that the
tests need no Python.
"""

import json
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[2] / "crates" / "train" / "tests" / "fixtures"
P0 = [1.0, -0.5]
LR = 0.1
BETAS = (0.9, 0.999)
EPS = 1e-8
N_STEPS = 3
CASES = [("adam", 0.0, 0.0), ("adam", 0.0, 0.25), ("adam", 0.5, 0.25), ("adamw", 0.5, 0.25)]


def trajectory(kind, weight_decay, target, dtype):
    p = torch.tensor(P0, dtype=dtype, requires_grad=True)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind]
    # foreach=False: the plain per-parameter loop, the reference implementation.
    opt = cls([p], lr=LR, betas=BETAS, eps=EPS, weight_decay=weight_decay, foreach=False)
    steps = []
    for _ in range(N_STEPS):
        opt.zero_grad()
        (((p - target) ** 2).sum() / 2).backward()
        opt.step()
        steps.append([float(v) for v in p.detach()])
    return steps


def main():
    # The weight decay must show: each decayed run ends away from the undecayed one.
    plain = trajectory("adam", 0.0, 0.25, torch.float64)[-1]
    for kind in ("adam", "adamw"):
        decayed = trajectory(kind, 0.5, 0.25, torch.float64)[-1]
        assert min(abs(a - b) for a, b in zip(plain, decayed)) > 1e-4, (kind, plain, decayed)

    cases = []
    for kind, weight_decay, target in CASES:
        f64 = trajectory(kind, weight_decay, target, torch.float64)
        f32 = trajectory(kind, weight_decay, target, torch.float32)
        gap = max(abs(a - b) for s64, s32 in zip(f64, f32, strict=True) for a, b in zip(s64, s32, strict=True))
        assert gap < 1e-6, (kind, weight_decay, gap)
        cases.append(
            {
                "kind": kind,
                "weight_decay": weight_decay,
                "target": target,
                "p_after_each_step": f64,
                "p_after_each_step_f32": f32,
            }
        )
        print(f"{kind} weight_decay={weight_decay} target={target}: after {N_STEPS} steps {f64[-1]}, float32 off by {gap:.1e}")
    payload = {
        "generator": "scripts/golden/optim.py",
        "reference": f"torch {torch.__version__} torch.optim.Adam / AdamW (foreach=False), float64; "
        "the float32 run for comparison",
        "p0": P0,
        "lr": LR,
        "betas": list(BETAS),
        "eps": EPS,
        "loss": "sum((p - target)^2) / 2",
        "cases": cases,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "adam_three_steps.json"
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)
        f.write("\n")
    print(f"wrote {path.relative_to(OUT.parents[3])}")


if __name__ == "__main__":
    main()
