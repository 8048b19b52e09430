"""The tiny diffusers `UNet2DModel` of the sample crate's fixtures: 8x8 RGB, two levels of 8 and
16 channels, attention at the second, the paper's time embedding (positional, no sin/cos flip,
shift 1). `diffusers_folders.py` builds it as it is; `class_cond.py` adds class embeddings and
`learned_range_diffusers.py` doubles its output channels."""

TINY = dict(
    sample_size=8,
    in_channels=3,
    out_channels=3,
    layers_per_block=1,
    block_out_channels=(8, 16),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=4,
    norm_eps=1e-6,
    freq_shift=1,
    flip_sin_to_cos=False,
    downsample_padding=0,
    attention_head_dim=None,
    act_fn="silu",
    time_embedding_type="positional",
)
