# Second device call (nvidia-h200), about 4 minutes: bf16 launches against their candidates in one process: the
# signs= launches the offline audit flagged (bench/results/fwht-launch-audit-sm90-2026-12-04-o.md; 4864, 18944,
# 27648) and the registers-form launches by groups with signed adds (Pow2Config.group; 3584, 17408, 18432 signs=, 28672).
#   run: bash devtmp/run2.sh   (writes $OUT/o2.md, $OUT/o2.log)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=uuid --format=csv,noheader | tee $OUT/gpu2.txt
S=3584,4864,17408,18432,18944,27648,28672
(cd bench && timeout 420 python gpu_fwht.py --sizes $S --dtypes bfloat16 --variants '' --signs-sizes $S --sweep $S \
  --dense-configs candidates/fwht-grid-fit-2026-12-04-o1.json,candidates/fwht-groups-2026-12-05-p1.json \
  --jobs 16 --rep-ms 10 --compile-timeout 150 --out $OUT/o2.md > $OUT/o2.log 2>&1)
tail -3 $OUT/o2.log
