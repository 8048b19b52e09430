#!/usr/bin/env python3
"""Golden fixture for importance sampling of the training timesteps (Nichol & Dhariwal 2021,
"Improved DDPM", Eq. 17; `objective.timestep_sampling = "importance"`), computed independently of
our Rust code (crates/train/src/timesteps.rs).

Re-typed from improved-diffusion's `improved_diffusion/resample.py`
(`LossSecondMomentResampler` with history_per_term = 10, uniform_prob = 0.001), not imported:

* the history keeps the last 10 losses seen at each t (`update_with_all_losses`: once a t has
  10, its oldest is dropped);
* until every t has 10 losses the weights are all ones; then w_t = sqrt(mean over the history of
  L_t^2), w /= sum(w), w *= 1 - uniform_prob, w += uniform_prob / T;
* p = w / sum(w) (`sample`), and each drawn sample's loss weight is 1 / (T p_t).

The draw itself maps given uniforms u to t by inverting the CDF (t = the first index whose
cumulative p exceeds u: np.searchsorted(cumsum(p), u, side="right")), which is how the trainer
turns its generator's uniforms into timesteps (numpy's `np.random.choice` does the same with its
own uniforms).

Run from the repository root:

    .venv/bin/python scripts/golden/importance_sampling.py

It rewrites crates/train/tests/fixtures/importance_sampling_golden.json (committed).
Requirements: numpy.
"""

import json
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[2] / "crates" / "train" / "tests" / "fixtures"
T = 20
HISTORY = 10
UNIFORM_PROB = 0.001


def update(history, counts, ts, losses):
    for t, loss in zip(ts, losses):
        if counts[t] == HISTORY:
            history[t, :-1] = history[t, 1:]
            history[t, -1] = loss
        else:
            history[t, counts[t]] = loss
            counts[t] += 1


def probabilities(history, counts):
    if not (counts == HISTORY).all():
        w = np.ones([T], dtype=np.float64)
    else:
        w = np.sqrt(np.mean(history**2, axis=-1))
        w /= np.sum(w)
        w *= 1 - UNIFORM_PROB
        w += UNIFORM_PROB / len(w)
    return w / np.sum(w)


def draw(p, uniforms):
    t = np.minimum(np.searchsorted(np.cumsum(p), uniforms, side="right"), T - 1)
    return t, 1.0 / (T * p[t])


def case(history, counts, ts, losses, uniforms):
    before = [history[t, : counts[t]].tolist() for t in range(T)]
    update(history, counts, ts, losses)
    after = [history[t, : counts[t]].tolist() for t in range(T)]
    p = probabilities(history, counts)
    t, weights = draw(p, uniforms)
    return {
        "history": before,
        "update_t": [int(x) for x in ts],
        "update_losses": [float(x) for x in losses],
        "history_after": after,
        "probabilities": p.tolist(),
        "uniforms": uniforms.tolist(),
        "t": t.tolist(),
        "weights": weights.tolist(),
    }


def main():
    rng = np.random.default_rng(30)
    cases = []
    # Warming up: t = 3 has only 9 losses, so p stays uniform.
    history = np.zeros([T, HISTORY])
    counts = np.full([T], HISTORY)
    counts[3] = 8
    history[:] = rng.gamma(2.0, 0.5 + np.arange(T)[:, None] / 4.0, size=[T, HISTORY])
    history[3, 8:] = 0.0
    cases.append(case(history, counts, [3], [0.7], rng.random(16)))
    # Warmed up by this update (t = 3 gets its 10th loss); losses grow with t.
    cases.append(case(history, counts, [3, 5, 5, 19], [1.5, 2.0, 2.5, 40.0], rng.random(64)))
    # Warmed up, with a few t far heavier than the rest, and the oldest losses rolling out.
    ts = rng.integers(0, T, size=30)
    losses = rng.gamma(1.0, 1.0, size=30) * np.where(ts < 4, 50.0, 1.0)
    cases.append(case(history, counts, ts, losses, rng.random(64)))
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "importance_sampling_golden.json"
    path.write_text(json.dumps({"T": T, "history_per_t": HISTORY, "cases": cases}) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
