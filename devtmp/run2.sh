# Second device call (nvidia-h200), about 4 minutes: the launches the offline audit flagged
# (bench/results/fwht-launch-audit-sm90-2026-12-04-o.md) against their table launches, in one process.
#   run: bash devtmp/run2.sh   (writes $OUT/o1.md, $OUT/o1.log)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=uuid --format=csv,noheader | tee $OUT/gpu2.txt
S=4864,18944,27648,8960
(cd bench && timeout 420 python gpu_fwht.py --sizes $S --dtypes bfloat16,float32 --variants '' --signs-sizes $S --sweep $S \
  --dense-configs candidates/fwht-grid-fit-2026-12-04-o1.json --jobs 16 --rep-ms 10 --compile-timeout 150 --out $OUT/o1.md > $OUT/o1.log 2>&1)
tail -3 $OUT/o1.log
