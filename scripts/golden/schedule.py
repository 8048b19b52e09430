#!/usr/bin/env python3
"""Golden fixtures for the `schedule` crate, computed independently of our Rust code.

Each reference follows the code that defined it, re-typed here in numpy:

* the seed notebook's linear schedule (T = 300), computed as TensorFlow 2 does in float32:
  `tf.linspace` (math_ops.linspace_nd: `start + delta * i` in float32, with both end points
  copied exactly) and `tf.math.cumprod` in float32;
* linear and quadratic schedules from the official DDPM code (hojonathanho/diffusion,
  diffusion_utils_2.get_beta_schedule), in float64;
* the cosine schedule from improved-diffusion (openai/improved-diffusion,
  gaussian_diffusion.get_named_beta_schedule and betas_for_alpha_bar, max_beta = 0.999);
* the sigmoid schedule from the DDIM code (ermongroup/ddim, runners/diffusion.get_beta_schedule),
  which diffusers' DDPMScheduler copies: sigmoid(linspace(-6, 6, T)) * (end - start) + start;
* every derived table as improved-diffusion's GaussianDiffusion.__init__ computes it, in float64;
* DDIM coefficients as the DDIM code's generalized_steps computes them (Song et al. 2021,
  Eq. 12 and 16), with t_prev = -1 meaning alpha_bar_prev = 1;
* sampling sub-sequences as diffusers' DDIMScheduler.set_timesteps computes them for each
  `timestep_spacing`, cross-checked against exact rational arithmetic.

Run from the repository root:

    .venv/bin/python scripts/golden/schedule.py

It rewrites the JSON files in crates/schedule/tests/fixtures/, which are committed so that the
tests need no Python.
"""

import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[2] / "crates" / "schedule" / "tests" / "fixtures"


# ---------------------------------------------------------------------------------------------
# Beta schedules.


def tf_linspace_f32(start, stop, num):
    """`tf.linspace(start, stop, num)` for Python float arguments, as TensorFlow 2 computes it.

    The Python floats become float32 tensors; delta = (stop - start) / (num - 1) and the interior
    points start + delta * i are each rounded to float32; the end points are copied exactly.
    """
    f32 = np.float32
    start, stop = f32(start), f32(stop)
    n_steps = f32(max(num - 1, 1))
    delta = (stop - start) / n_steps
    interior = start + delta * np.arange(1, max(num - 1, 1), dtype=np.float32)
    out = np.concatenate([[start], interior, [stop]]).astype(np.float32)
    return out[:num]


def linear_betas(n_steps, start, end):
    """Official DDPM code: np.linspace(beta_start, beta_end, T, dtype=np.float64)."""
    return np.linspace(start, end, n_steps, dtype=np.float64)


def quadratic_betas(n_steps, start, end):
    """Official DDPM code, 'quad': np.linspace(start ** 0.5, end ** 0.5, T) ** 2."""
    return np.linspace(start**0.5, end**0.5, n_steps, dtype=np.float64) ** 2


def sigmoid_betas(n_steps, start, end):
    """DDIM code, 'sigmoid': sigmoid(np.linspace(-6, 6, T)) * (end - start) + start."""

    def sigmoid(x):
        return 1 / (np.exp(-x) + 1)

    return sigmoid(np.linspace(-6, 6, n_steps)) * (end - start) + start


def betas_for_alpha_bar(n_steps, alpha_bar, max_beta=0.999):
    """improved-diffusion: beta_i = min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta)."""
    betas = []
    for i in range(n_steps):
        t1 = i / n_steps
        t2 = (i + 1) / n_steps
        betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return np.array(betas)


def cosine_betas(n_steps, s=0.008, max_beta=0.999):
    """improved-diffusion, 'cosine' (Nichol & Dhariwal 2021, Eq. 17), with s = 0.008."""
    return betas_for_alpha_bar(
        n_steps, lambda t: math.cos((t + s) / (1 + s) * math.pi / 2) ** 2, max_beta
    )


# ---------------------------------------------------------------------------------------------
# Derived tables.


def tables_f64(betas):
    """Every table, as improved-diffusion's GaussianDiffusion.__init__ computes it (float64)."""
    betas = np.asarray(betas, dtype=np.float64)
    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas, axis=0)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    return {
        "betas": betas,
        "alphas": alphas,
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": alphas_cumprod_prev,
        "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
        "sqrt_recip_alphas": np.sqrt(1.0 / alphas),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1),
        "posterior_variance": posterior_variance,
        # The official code: log of beta-tilde with beta-tilde_0 = 0 replaced by beta-tilde_1.
        "posterior_log_variance_clipped": np.log(
            np.append(posterior_variance[1], posterior_variance[1:])
        ),
        "posterior_mean_coef1": betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        "posterior_mean_coef2": (1.0 - alphas_cumprod_prev)
        * np.sqrt(alphas)
        / (1.0 - alphas_cumprod),
        "snr": alphas_cumprod / (1.0 - alphas_cumprod),
    }


def notebook_tables_f32(n_steps=300, start=0.0001, end=0.02):
    """The seed notebook's tables, in float32 and in its order of operations."""
    f32 = np.float32
    betas = tf_linspace_f32(start, end, n_steps)
    alphas = f32(1.0) - betas
    # tf.math.cumprod on one 1-D tensor multiplies sequentially, rounding to float32 each time.
    alphas_cumprod = np.multiply.accumulate(alphas, dtype=np.float32)
    alphas_cumprod_prev = np.concatenate([[f32(1.0)], alphas_cumprod[:-1]]).astype(np.float32)
    tables = {
        "betas": betas,
        "alphas": alphas,
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": alphas_cumprod_prev,
        "sqrt_recip_alphas": np.sqrt(f32(1.0) / alphas),
        "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(f32(1.0) - alphas_cumprod),
        "posterior_variance": betas * (f32(1.0) - alphas_cumprod_prev) / (f32(1.0) - alphas_cumprod),
    }
    for name, table in tables.items():
        assert table.dtype == np.float32, name
    return tables


# ---------------------------------------------------------------------------------------------
# Sub-sequences of timesteps and DDIM coefficients.


def diffusers_timesteps(n_train, n_sample, spacing):
    """diffusers DDIMScheduler.set_timesteps (steps_offset = 0), in sampling order."""
    if spacing == "linspace":
        ts = np.linspace(0, n_train - 1, n_sample).round()[::-1].copy().astype(np.int64)
    elif spacing == "leading":
        step_ratio = n_train // n_sample
        ts = (np.arange(0, n_sample) * step_ratio).round()[::-1].copy().astype(np.int64)
    elif spacing == "trailing":
        step_ratio = n_train / n_sample
        ts = np.round(np.arange(n_train, 0, -step_ratio)).astype(np.int64)
        ts -= 1
    else:
        raise ValueError(spacing)
    return [int(t) for t in ts]


def round_half_even(q):
    """Rounds a Fraction to the nearest integer, ties to even (numpy's np.round)."""
    floor = q.numerator // q.denominator
    rest = q - floor
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and floor % 2 == 1):
        return floor + 1
    return floor


def exact_timesteps(n_train, n_sample, spacing):
    """The same sub-sequences in exact rational arithmetic: what the floats approximate."""
    if spacing == "linspace":
        if n_sample == 1:
            return [0]
        return [
            round_half_even(Fraction(i * (n_train - 1), n_sample - 1))
            for i in reversed(range(n_sample))
        ]
    if spacing == "leading":
        return [i * (n_train // n_sample) for i in reversed(range(n_sample))]
    if spacing == "trailing":
        return [
            round_half_even(Fraction(n_train * (n_sample - i), n_sample)) - 1
            for i in range(n_sample)
        ]
    raise ValueError(spacing)


def ddim_case(betas, t, t_prev, eta, x_t, eps, noise):
    """The DDIM code's generalized_steps for one scalar pixel (Song et al. 2021, Eq. 12 and 16).

    compute_alpha prepends beta = 0, so index t_prev = -1 reads alpha_bar = 1.
    """
    b = np.concatenate([[0.0], np.asarray(betas, dtype=np.float64)])
    a = np.cumprod(1 - b)
    at, at_next = a[t + 1], a[t_prev + 1]
    x0_t = (x_t - eps * math.sqrt(1 - at)) / math.sqrt(at)
    c1 = eta * math.sqrt((1 - at / at_next) * (1 - at_next) / (1 - at))
    c2 = math.sqrt((1 - at_next) - c1**2)
    xt_next = math.sqrt(at_next) * x0_t + c1 * noise + c2 * eps
    return {
        "t": t,
        "t_prev": None if t_prev < 0 else t_prev,
        "eta": eta,
        "alpha_cumprod": at,
        "alpha_cumprod_prev": at_next,
        "sigma": c1,
        "sqrt_alpha_cumprod_prev": math.sqrt(at_next),
        "direction_coef": c2,
        "x_t": x_t,
        "eps": eps,
        "noise": noise,
        "pred_x0": x0_t,
        "prev_sample": xt_next,
    }


# ---------------------------------------------------------------------------------------------
# Output.


def as_list(table):
    # float(np.float32) is exact, and json writes the shortest repr that round-trips in float64.
    return [float(v) for v in table]


def write(name, payload):
    path = OUT / name
    with open(path, "w") as f:
        json.dump(payload, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {path.relative_to(OUT.parents[3])} ({path.stat().st_size} bytes)")


def tables_payload(source, config, tables, names=None):
    names = names or list(tables)
    return {
        "source": source,
        "config": config,
        "tables": {name: as_list(tables[name]) for name in names},
    }


def main():
    OUT.mkdir(parents=True, exist_ok=True)

    write(
        "linear_t300_notebook_f32.json",
        tables_payload(
            "seed notebook: tf.linspace(1e-4, 0.02, 300) and tf.math.cumprod, float32",
            {"kind": "linear", "n_steps": 300, "start": 0.0001, "end": 0.02},
            notebook_tables_f32(),
        ),
    )
    write(
        "linear_t300.json",
        tables_payload(
            "official DDPM linear schedule with improved-diffusion's tables, float64",
            {"kind": "linear", "n_steps": 300, "start": 0.0001, "end": 0.02},
            tables_f64(linear_betas(300, 0.0001, 0.02)),
        ),
    )
    linear = tables_f64(linear_betas(1000, 0.0001, 0.02))
    pv = linear["posterior_variance"]
    assert pv[0] == 0 and abs(pv[487] - 0.00979) < 5e-6 and abs(pv[999] - 0.02) < 1e-4
    write(
        "linear_t1000.json",
        tables_payload(
            "official DDPM linear schedule (Ho et al. 2020) with improved-diffusion's tables, float64",
            {"kind": "linear", "n_steps": 1000, "start": 0.0001, "end": 0.02},
            linear,
        ),
    )
    cosine = tables_f64(cosine_betas(1000))
    assert cosine["betas"][-1] == 0.999
    write(
        "cosine_t1000.json",
        tables_payload(
            "improved-diffusion cosine schedule (betas_for_alpha_bar, max_beta 0.999), float64",
            {"kind": "cosine", "n_steps": 1000, "s": 0.008, "max_beta": 0.999},
            cosine,
        ),
    )
    write(
        "quadratic_t1000.json",
        tables_payload(
            "official DDPM 'quad' schedule, float64",
            {"kind": "quadratic", "n_steps": 1000, "start": 0.0001, "end": 0.02},
            tables_f64(quadratic_betas(1000, 0.0001, 0.02)),
            ["betas", "alphas_cumprod"],
        ),
    )
    write(
        "sigmoid_t1000.json",
        tables_payload(
            "DDIM code's 'sigmoid' schedule, float64",
            {"kind": "sigmoid", "n_steps": 1000, "start": 0.0001, "end": 0.02},
            tables_f64(sigmoid_betas(1000, 0.0001, 0.02)),
            ["betas", "alphas_cumprod"],
        ),
    )

    # DDIM: the first step, interior steps, the final step (t_prev = -1), eta in {0, 0.5, 1}.
    betas = linear_betas(1000, 0.0001, 0.02)
    cases = []
    for t, t_prev in [(999, 979), (500, 480), (20, 0), (980, 479), (19, -1), (0, -1), (1, 0)]:
        for eta in (0.0, 0.5, 1.0):
            cases.append(ddim_case(betas, t, t_prev, eta, x_t=0.3, eps=-0.7, noise=1.1))
    write(
        "ddim_linear_t1000.json",
        {
            "source": "ermongroup/ddim generalized_steps on the linear T = 1000 schedule, float64",
            "config": {"kind": "linear", "n_steps": 1000, "start": 0.0001, "end": 0.02},
            "cases": cases,
        },
    )

    # Sub-sequences: diffusers where its floats agree with exact arithmetic, and the exact
    # answer where they do not (trailing T = 300, n = 7: np.arange yields an eighth step, -1).
    timesteps = []
    for n_train, n_sample in [(1000, 50), (1000, 10), (1000, 7), (1000, 1), (1000, 1000), (300, 10), (300, 300), (10, 3)]:
        for spacing in ("linspace", "leading", "trailing"):
            ts = diffusers_timesteps(n_train, n_sample, spacing)
            assert ts == exact_timesteps(n_train, n_sample, spacing), (n_train, n_sample, spacing)
            timesteps.append(
                {"n_train_steps": n_train, "n_sample_steps": n_sample, "spacing": spacing, "timesteps": ts, "source": "diffusers"}
            )
    for n_train, n_sample, spacing in [(300, 7, "trailing"), (300, 72, "trailing")]:
        assert diffusers_timesteps(n_train, n_sample, spacing) != exact_timesteps(n_train, n_sample, spacing)
        timesteps.append(
            {
                "n_train_steps": n_train,
                "n_sample_steps": n_sample,
                "spacing": spacing,
                "timesteps": exact_timesteps(n_train, n_sample, spacing),
                "source": "exact (diffusers' float arange differs here)",
            }
        )
    write("timesteps.json", {"source": "diffusers DDIMScheduler.set_timesteps, steps_offset = 0", "cases": timesteps})


if __name__ == "__main__":
    main()
