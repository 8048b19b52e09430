#!/usr/bin/env python3
"""Golden fixture for the DDIM paper's `quadratic` timestep spacing (schedule::TimestepSpacing::Quadratic).

Re-typed from the DDIM code (ermongroup/ddim, runners/diffusion.py, Diffusion.sample_image with
`--skip_type quad`):

    seq = (np.linspace(0, np.sqrt(self.num_timesteps * 0.8), self.args.timesteps) ** 2)
    seq = [int(s) for s in list(seq)]

and sampled in reverse (largest first). Cases whose `seq` repeats a value (the DDIM code then
takes no-op steps) are recorded with "repeats": true; the Rust side refuses them.

Requirements: numpy only (as scripts/golden/schedule.py). Run from the repository root:

    .venv/bin/python scripts/golden/quadratic_timesteps.py

It rewrites crates/schedule/tests/fixtures/timesteps_quadratic.json, which is committed.
"""

import json
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[2] / "crates" / "schedule" / "tests" / "fixtures"


def ddim_quad_seq(num_timesteps, timesteps):
    seq = np.linspace(0, np.sqrt(num_timesteps * 0.8), timesteps) ** 2
    return [int(s) for s in list(seq)]


def main():
    cases = []
    for n_train in (10, 50, 100, 300, 1000, 4000):
        for n_sample in sorted({1, 2, 3, 5, 8, 10, 16, 17, 20, 25, 29, 30, 50, 100}):
            if n_sample > n_train:
                continue
            seq = ddim_quad_seq(n_train, n_sample)
            cases.append(
                {
                    "n_train_steps": n_train,
                    "n_sample_steps": n_sample,
                    "repeats": len(set(seq)) != len(seq),
                    "timesteps": list(reversed(seq)),
                }
            )
    payload = {"source": "ermongroup/ddim runners/diffusion.py, skip_type quad (numpy)", "cases": cases}
    path = OUT / "timesteps_quadratic.json"
    path.write_text(json.dumps(payload, separators=(",", ":")) + "\n")
    print(f"wrote {path} ({len(cases)} cases, {sum(c['repeats'] for c in cases)} with repeats)")


if __name__ == "__main__":
    main()
