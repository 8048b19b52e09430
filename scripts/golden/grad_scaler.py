#!/usr/bin/env python3
"""torch.amp.GradScaler on a scripted sequence of finite and non-finite gradients: the golden
that the training crate's fp16 loss scaler (`train::scaler::LossScaler`) must reproduce.

Two parameters (3 and 2 values) get, at each step, the gradient `true * scale` of a backward on
the scaled loss `scaler.scale(sum(p * true))`, and then, for the steps the script marks, an infinity or a NaN in
one value (an overflow). GradScaler (device "cpu", init_scale 2^16, growth_factor 2,
backoff_factor 0.5, growth_interval 3 so that growth happens within a short sequence) unscales
them, steps an SGD optimizer (lr 0.1), and updates the scale. Recorded per step: the true
gradients, the poison, the scale before, whether `found_inf` was set, the unscaled gradients
(only when finite), whether the optimizer skipped the step (the parameters did not move), and
the scale after.

Run from the repository root (torch only, as in the project's venv):

    .venv/bin/python scripts/golden/grad_scaler.py

It writes crates/train/tests/fixtures/grad_scaler.json, which `the_loss_scaler_matches_torch_grad_scaler`
in crates/train/tests/loss_scale.rs compares bit for bit.
"""

import json
from pathlib import Path

import torch

OUT = Path("crates/train/tests/fixtures/grad_scaler.json")
SETTINGS = dict(init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=3)
# None: finite; "inf"/"nan": that value replaces parameter 1's first gradient value.
POISON = [None, None, "inf", None, None, None, None, "nan", "inf", None, None, None, None, None]


def main():
    gen = torch.Generator().manual_seed(26)
    params = [torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)]
    opt = torch.optim.SGD(params, lr=0.1)
    scaler = torch.amp.GradScaler("cpu", **SETTINGS)
    steps = []
    for poison in POISON:
        true = [torch.randn(p.shape, generator=gen) * 1e-3 for p in params]
        # A loss whose gradient is `true`, scaled and back-propagated as in training.
        loss = sum((p * g).sum() for p, g in zip(params, true))
        scaler.scale(loss).backward()
        scale = scaler.get_scale()
        if poison is not None:
            with torch.no_grad():
                params[1].grad[0] = float(poison)
        before = [p.detach().clone() for p in params]
        scaler.unscale_(opt)
        found_inf = float(sum(v.item() for v in scaler._found_inf_per_device(opt).values())) > 0
        unscaled = None if found_inf else [p.grad.tolist() for p in params]
        scaler.step(opt)
        skipped = all(torch.equal(b, p.detach()) for b, p in zip(before, params))
        scaler.update()
        steps.append(
            dict(
                true=[g.tolist() for g in true],
                poison=poison,
                scale_before=scale,
                found_inf=found_inf,
                unscaled=unscaled,
                skipped=skipped,
                scale_after=scaler.get_scale(),
            )
        )
        opt.zero_grad(set_to_none=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(dict(torch=torch.__version__, settings=SETTINGS, steps=steps), indent=1) + "\n")
    print(f"wrote {OUT}: {len(steps)} steps, scales {[s['scale_after'] for s in steps]}")


if __name__ == "__main__":
    main()
