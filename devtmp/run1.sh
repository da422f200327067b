# One device call (nvidia-h200), about 8 minutes: the packed 16-bit sign bits compiled on the GPU (tests), the sweep
# of bf16 signs= launches with them, and bf16 rows of 2048 timed plain and as block_size=2048 in alternation.
#   run: bash devtmp/run1.sh   (writes $OUT/tests.txt, $OUT/p1.md, $OUT/p1.log, $OUT/order.txt)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=uuid --format=csv,noheader | tee $OUT/gpu.txt
(timeout 170 python -m pytest -q -k "cuda and (held or registers or paley_core or launch_configs or bulk)" tests/ops/test_fwht.py -n 16 2>&1 | tail -4) | tee $OUT/tests.txt
S=3584,4864,9728,13824,14336,16384,17408,18432,18944,27648,28672,32768
(cd bench && timeout 330 python gpu_fwht.py --sizes $S --dtypes bfloat16 --variants '' --signs-sizes $S --sweep $S \
  --dense-configs candidates/fwht-packed-signs-2026-12-04-n1.json --jobs 16 --rep-ms 10 --compile-timeout 150 --out $OUT/p1.md > $OUT/p1.log 2>&1)
tail -3 $OUT/p1.log
