"""Times diffusers' loop alone (run from the repository root) for one (sampler, NFE) on the sweep's x_T (seed 0): images/s."""
import json, sys, time
sys.path.insert(0, "scripts/quality")
import torch
from sweep_diffusers import x_t_of, draw
from diffusers import UNet2DModel
torch.set_num_threads(2)
folder, name, nfe = sys.argv[1], sys.argv[2], int(sys.argv[3])
unet = UNet2DModel.from_pretrained(folder + "/unet").eval()
config = json.load(open(folder + "/scheduler/scheduler_config.json"))
x = x_t_of(0, 1000, 250, (1, 28, 28))
images, seconds = draw(unet, config, name, nfe, x, 250)
print(f"diffusers {name} NFE {nfe}: {1000 / seconds:.2f} images/s")
