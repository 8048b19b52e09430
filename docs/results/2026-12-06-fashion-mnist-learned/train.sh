#!/bin/bash
# The #30 race: fashion-mnist against fashion-mnist-learned, 30 minutes each, at once, 1 thread each.
cd /work/main
for p in fashion-mnist fashion-mnist-learned; do
  setsid timeout -s TERM 1800 target/release/ddpm train --preset $p --run-dir /work/scratch/race30/$p --data /usr/share/datasets/fashion-mnist \
    --device cpu --threads 1 --seed 0 --offline --progress-every 500 \
    --set epochs=100000 --set sample_every_epochs=0 > /work/scratch/race30/$p.log 2>&1 &
done
wait
echo done > /work/scratch/race30/DONE
