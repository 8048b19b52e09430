"""Writes the state-dict fixtures of torch-ext's pickle tests into tests/fixtures/.

Run with a python that has torch 2.11 (after `cargo xtask setup`: `.venv/bin/python`):

    .venv/bin/python crates/torch-ext/scripts/make_fixture.py

The values are simple closed forms, which the Rust tests spell out, so no golden file is needed.
"""

from pathlib import Path

import torch
from torch import nn

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


class B(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter((torch.arange(4.0) * 0.5 - 1.0).reshape(2, 2).to(torch.bfloat16))
        self.bias = nn.Parameter(torch.tensor([0.25, -0.25]))
        self.register_buffer("num_batches", torch.tensor(7))


class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.a.weight.copy_((torch.arange(6.0) * 0.5).reshape(2, 3))
        self.b = B()


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    # A module's state_dict(): an OrderedDict carrying a `_metadata` attribute, as diffusers saves.
    state = M().state_dict()
    assert list(state) == ["a.weight", "b.weight", "b.bias", "b.num_batches"], list(state)
    torch.save(state, OUT / "state_dict.pt")
    # A plain dict whose tensor is a non-contiguous view.
    torch.save({"t.weight": torch.arange(6.0).reshape(2, 3).t()}, OUT / "plain_dict.pt")
    # Not state dicts.
    torch.save([torch.zeros(2), torch.ones(2)], OUT / "list.pt")
    torch.save({"w": torch.zeros(2), "epoch": 3}, OUT / "dict_with_int.pt")
    for path in sorted(OUT.glob("*.pt")):
        print(path.name, path.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
