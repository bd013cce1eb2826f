#!/bin/bash
# Repeated 2-process launches of tests/distributed_worker.py (alternately fsdp and ddp), as tests/test_distributed.py
# made them at commit 8ae57d5 (a port picked here, then passed to torchrun); one line per launch in $OUT/summary.txt.
cd "$(git rev-parse --show-toplevel)"
OUT=${OUT:-/tmp/dist_stress}
export PYTHONPATH=$PWD/src:$PWD/tests OMP_NUM_THREADS=1 LATENTRL_THREADS=1
for i in $(seq 1 "${N:-12}"); do
  par=$([ $((i % 2)) = 0 ] && echo ddp || echo fsdp)
  out=$OUT/run$i; rm -rf "$out"; mkdir -p "$out"
  port=$(python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
  start=$(date +%s)
  timeout 900 python -m torch.distributed.run --nproc_per_node 2 --master_addr 127.0.0.1 --master_port "$port" \
    tests/distributed_worker.py "$out" "$par" grpo hrpo > "$out.log" 2>&1
  rc=$?
  echo "run $i $par rc=$rc $(( $(date +%s) - start ))s" >> "$OUT/summary.txt"
done
