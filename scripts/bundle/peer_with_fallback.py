#!/usr/bin/env python3
"""Runs scripts/bench/peer.py with the bundle's vendored pure-Python packages (pylib/: diffusers,
huggingface_hub, safetensors, ...) *after* the machine's own on sys.path, so that packages the
machine has win and only missing ones come from the bundle."""

import runpy
import sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent.parent
sys.path.append(str(root / "pylib"))
peer = root / "scripts/bench/peer.py"
sys.argv = [str(peer), *sys.argv[1:]]
runpy.run_path(str(peer), run_name="__main__")
