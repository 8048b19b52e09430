#!/usr/bin/env python3
"""Diffusers model folders for `sample::Pipeline` and `ddpm export`, made by diffusers itself.

Two tiny `UNet2DModel`s with the DDPM paper's block structure (attention at the second level):

* `legacy_pipeline/`: a diffusers *pipeline* folder as the `google/ddpm-*` repositories are laid out,
  `unet/config.json` with the key set diffusers 0.0.x wrote, `unet/diffusion_pytorch_model.bin`
  (a `torch.save`d state dict) with the deprecated attention names `query`, `key`, `value` and
  `proj_attn`, and `scheduler/scheduler_config.json` (DDPMScheduler, linear betas, T = 1000);
* `modern/`: a *model* folder from `save_pretrained` (modern names, safetensors) with a
  `scheduler_config.json` beside it (scaled_linear betas, T = 500, v-prediction, no clipping);
* `not_a_state_dict.bin`: `torch.save` of a list, for the error path;
* `io.safetensors`: fixed inputs `x` [2, 3, 8, 8] and `timesteps` [3, 700], with each model's
  eval-mode output `out_legacy` and `out_modern`.

The script also checks that diffusers loads the legacy folder (renaming the attention keys) to
the same output. Run from the repository root:

    .venv/bin/python scripts/golden/diffusers_folders.py                 # rewrite the fixtures
    .venv/bin/python scripts/golden/diffusers_folders.py --verify-export DIR IO

`--verify-export DIR IO` checks a folder written by `ddpm export`: `UNet2DModel.from_pretrained(DIR)`
(its `unet` subfolder for a pipeline) must load with no missing, unexpected or mismatched keys,
`DDPMScheduler.from_pretrained(DIR)` (`scheduler`) must load, and the model's output on IO's
`x`/`timesteps` (and `class_labels`, for a class-conditional model) must equal IO's `out` (the Rust
network's) to 1e-5. For a pipeline folder (`model_index.json`), `DDPMPipeline` and `DDIMPipeline`
must load it and draw an image, and the model card `README.md` must have YAML front matter that
`yaml` and `huggingface_hub.ModelCard` parse, with `library_name: diffusers` and the tags; it is
printed as a `CARD {json}` line. It prints the largest difference and exits non-zero on a mismatch.
Needs: torch, diffusers (with its huggingface_hub and pyyaml), safetensors, numpy.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from diffusers import DDIMPipeline, DDPMPipeline, DDPMScheduler, UNet2DModel
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_unet import TINY  # noqa: E402

OUT = Path(__file__).resolve().parents[2] / "crates" / "sample" / "tests" / "fixtures" / "diffusers"

# The keys diffusers 0.0.4 wrote into google/ddpm-cifar10-32's unet/config.json.
LEGACY_KEYS = [
    "act_fn", "attention_head_dim", "block_out_channels", "center_input_sample", "down_block_types",
    "downsample_padding", "flip_sin_to_cos", "freq_shift", "in_channels", "layers_per_block",
    "mid_block_scale_factor", "norm_eps", "norm_num_groups", "out_channels", "sample_size",
    "time_embedding_type", "up_block_types",
]

DEPRECATED = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def legacy_name(key):
    for new, old in DEPRECATED.items():
        marker = f".{new}."
        if ".attentions." in key and marker in key:
            return key.replace(marker, f".{old}.")
    return key


def perturbed(seed):
    torch.manual_seed(seed)
    model = UNet2DModel(**TINY)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.add_(0.02 * noise)
    return model.eval()


def write_fixtures():
    OUT.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 8, 8, generator=gen)
    t = torch.tensor([3, 700], dtype=torch.int64)

    legacy = perturbed(10)
    unet_dir = OUT / "legacy_pipeline" / "unet"
    unet_dir.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in legacy.config.items() if k in LEGACY_KEYS}
    config = {"_class_name": "UNet2DModel", "_diffusers_version": "0.0.4", **config}
    (unet_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    state = {legacy_name(k): v for k, v in legacy.state_dict().items()}
    assert any(".query." in k for k in state) and any(".proj_attn." in k for k in state)
    torch.save(state, unet_dir / "diffusion_pytorch_model.bin")
    sched_dir = OUT / "legacy_pipeline" / "scheduler"
    sched_dir.mkdir(parents=True, exist_ok=True)
    (sched_dir / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "DDPMScheduler", "_diffusers_version": "0.1.1", "beta_end": 0.02,
        "beta_schedule": "linear", "beta_start": 0.0001, "clip_sample": True,
        "num_train_timesteps": 1000, "trained_betas": None, "variance_type": "fixed_small",
    }, indent=2) + "\n")
    (OUT / "legacy_pipeline" / "model_index.json").write_text(json.dumps({
        "_class_name": "DDPMPipeline", "scheduler": ["diffusers", "DDPMScheduler"],
        "unet": ["diffusers", "UNet2DModel"],
    }, indent=2) + "\n")

    # diffusers itself must read this legacy folder back to the same network.
    reloaded = UNet2DModel.from_pretrained(unet_dir).eval()
    with torch.no_grad():
        out_legacy = legacy(x, t).sample
        err = (reloaded(x, t).sample - out_legacy).abs().max().item()
    assert err == 0.0, f"diffusers reads the legacy folder differently: {err}"

    modern = perturbed(20)
    modern.save_pretrained(OUT / "modern", safe_serialization=True)
    DDPMScheduler(num_train_timesteps=500, beta_schedule="scaled_linear", beta_start=0.00085,
                  beta_end=0.012, prediction_type="v_prediction",
                  clip_sample=False).save_pretrained(OUT / "modern")
    with torch.no_grad():
        out_modern = modern(x, t).sample

    torch.save([1, 2, 3], OUT / "not_a_state_dict.bin")
    save_file({"x": x, "timesteps": t, "out_legacy": out_legacy.contiguous(),
               "out_modern": out_modern.contiguous()}, OUT / "io.safetensors")
    n = sum(p.numel() for p in legacy.parameters())
    print(f"{n} parameters each; |out| max {out_legacy.abs().max():.3f}, {out_modern.abs().max():.3f}")


def verify_export(directory, io_file):
    directory = Path(directory)
    pipeline = (directory / "model_index.json").is_file()
    unet_sub = {"subfolder": "unet"} if pipeline else {}
    sched_sub = {"subfolder": "scheduler"} if pipeline else {}
    model, info = UNet2DModel.from_pretrained(directory, output_loading_info=True, **unet_sub)
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        if info[kind]:
            sys.exit(f"{kind}: {info[kind]}")
    scheduler = DDPMScheduler.from_pretrained(directory, **sched_sub)
    io = load_file(io_file)
    with torch.no_grad():
        # A class-conditional export is run on IO's `class_labels` (its last embedding is the
        # null label, as for any label).
        out = model.eval()(io["x"], io["timesteps"], class_labels=io.get("class_labels")).sample
    err = (out - io["out"]).abs().max().item()
    print(f"diffusers vs Rust output: max abs error {err:.3e}; scheduler T = "
          f"{scheduler.config.num_train_timesteps}, {scheduler.config.beta_schedule}, "
          f"{scheduler.config.prediction_type}")
    if "betas" in io:
        berr = (scheduler.betas.double() - io["betas"].double()).abs().max().item()
        print(f"scheduler betas vs Rust: max abs error {berr:.3e}")
        if berr > 1e-6:
            sys.exit("scheduler mismatch")
    if err > 1e-5:
        sys.exit("mismatch")
    if pipeline:
        conditional = model.config.num_class_embeds is not None
        generate(directory, conditional)
        check_card(directory / "README.md", conditional)


def generate(directory, conditional):
    """`DDPMPipeline` and `DDIMPipeline.from_pretrained` load the folder and draw an image (3
    steps). Their `__call__` passes no class labels, so a class-conditional U-Net is run through
    the loaded pipeline's scheduler with labels, as the model card shows."""
    for cls in (DDPMPipeline, DDIMPipeline):
        pipe = cls.from_pretrained(directory)
        gen = torch.Generator().manual_seed(0)
        if conditional:
            c, s = pipe.unet.config.in_channels, pipe.unet.config.sample_size
            labels = torch.arange(2) % pipe.unet.config.num_class_embeds
            x = torch.randn(2, c, s, s, generator=gen)
            pipe.scheduler.set_timesteps(3)
            for t in pipe.scheduler.timesteps:
                with torch.no_grad():
                    eps = pipe.unet(x, t, class_labels=labels).sample
                x = pipe.scheduler.step(eps, t, x, generator=gen).prev_sample
            images = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
        else:
            images = pipe(batch_size=1, generator=gen, num_inference_steps=3, output_type="np").images
        if not np.isfinite(images).all():
            sys.exit(f"{cls.__name__} drew non-finite pixels")
        print(f"{cls.__name__}.from_pretrained: drew images of shape {tuple(images.shape)} "
              f"with {type(pipe.scheduler).__name__}")


def check_card(path, conditional):
    """The model card's front matter parses as YAML (and as huggingface_hub's `ModelCard`), with
    `library_name`, `license` and the tags; it is printed as one JSON line for the Rust test."""
    text = path.read_text()
    if not text.startswith("---\n"):
        sys.exit(f"{path}: no front matter")
    front = yaml.safe_load(text.split("---\n")[1])
    card = ModelCard.load(path).data.to_dict()
    if front.get("library_name") != "diffusers" or card.get("library_name") != "diffusers":
        sys.exit(f"{path}: library_name is not diffusers: {front}")
    tag = "class-conditional" if conditional else "unconditional-image-generation"
    if "ddpm" not in front.get("tags", []) or tag not in front["tags"]:
        sys.exit(f"{path}: tags lack ddpm or {tag}: {front}")
    print("CARD " + json.dumps(front, sort_keys=True))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--verify-export", nargs=2, metavar=("DIR", "IO"))
    args = parser.parse_args()
    verify_export(*args.verify_export) if args.verify_export else write_fixtures()
