# One device call: the roofline run for the README (FWHT launches compiled first), the CUDA tests of the new table,
# then bf16 9728/17408/18944/27648 plain against stages-3 dense candidates.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=uuid,driver_version --format=csv,noheader | tee $OUT/gpu5.txt
date +%s > $OUT/t.txt
timeout 120 python devtmp/precompile.py 2>&1 | tail -1 | cut -c1-300
date +%s >> $OUT/t.txt
(cd bench && timeout 290 python gpu_roofline.py --host --out $OUT/roof.md > $OUT/roof.log 2>&1)
date +%s >> $OUT/t.txt
(timeout 90 python -m pytest -q -k cuda tests/ops/test_fwht.py tests/ops/test_launch.py -n 16 2>&1 | tail -4) | tee $OUT/tests5.txt
date +%s >> $OUT/t.txt
S=9728,17408,18944,27648
(cd bench && timeout 80 python gpu_fwht.py --sizes $S --dtypes bfloat16 --variants '' --sweep $S \
  --dense-configs candidates/fwht-stages-2026-12-05-q1.json --jobs 16 --rep-ms 10 --compile-timeout 60 --out $OUT/q4.md > $OUT/q4.log 2>&1)
date +%s >> $OUT/t.txt
tail -14 $OUT/roof.log | cut -c1-200
