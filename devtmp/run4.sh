# Fourth device call: the new table's CUDA tests, and bf16 27648/18944/9728 plain against stages-3 dense candidates.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=uuid --format=csv,noheader | tee $OUT/gpu4.txt
(timeout 200 python -m pytest -q -k cuda tests/ops/test_fwht.py tests/ops/test_launch.py -n 16 2>&1 | tail -6) | tee $OUT/tests4.txt
S=9728,17408,18944,27648
(cd bench && timeout 330 python gpu_fwht.py --sizes $S --dtypes bfloat16 --variants '' --signs-sizes $S --sweep $S \
  --dense-configs candidates/fwht-stages-2026-12-05-q1.json --jobs 16 --rep-ms 10 --compile-timeout 150 --out $OUT/q1.md > $OUT/q1.log 2>&1)
tail -3 $OUT/q1.log
