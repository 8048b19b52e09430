#!/bin/bash
# Same-minute images/s: ours (new allocator setting), ours with glibc's default, and diffusers' loop, alternated, 1000 images, batches of 250, 2 threads.
# Run from the repository root: CKPT is the fashion-mnist run directory, EXPORT its `ddpm export`.
HERE=$(dirname "$0"); CKPT=${CKPT:?the run directory}; EXPORT=${EXPORT:?its ddpm export}
D=target/release/ddpm; PY=.venv/bin/python
ours() { # label env... -- args
  $D sample --checkpoint $CKPT "$@" --no-clip -n 1000 --batch 250 --seed 0 --threads 2 --npz /tmp/speed.npz 2>&1 | grep "images in"; }
for round in 1 2; do
  for pair in "dpm-solver++:3 --sampler dpm-solver++ --order 3" "unipc:2:bh2 --sampler unipc"; do
    set -- $pair; name=$1; shift
    for nfe in 10 20; do
      a="ours $name NFE $nfe round $round: $(ours "$@" --steps $nfe)"
      b=$($PY $HERE/speed_diffusers.py $EXPORT $name $nfe 2>/dev/null)
      c="ours-glibc-default $name NFE $nfe round $round: $(GLIBC_TUNABLES=glibc.malloc.check=0 ours "$@" --steps $nfe)"
      if [ $round = 2 ]; then echo "$c"; echo "$b round $round"; echo "$a"; else echo "$a"; echo "$b round $round"; echo "$c"; fi
    done
  done
done
