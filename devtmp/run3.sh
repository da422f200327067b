# Third device call (nvidia-h200), about 6 minutes: fp32 launches against their candidates in one process: H_K in
# registers by groups with signed adds (Pow2Config.group: groups of four, or of five for K = 68, 74, 108) at every
# registers-form size, plain and with signs=, and the audit's 8960 signs= launch with one program an SM.
#   run: bash devtmp/run3.sh   (writes $OUT/p3.md, $OUT/p3.log)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=uuid --format=csv,noheader | tee $OUT/gpu3.txt
S=3584,4864,8960,9728,13824,14336,17408,18432,18944,27648,28672
(cd bench && timeout 540 python gpu_fwht.py --sizes $S --dtypes float32 --variants '' --signs-sizes $S --sweep $S \
  --dense-configs candidates/fwht-grid-fit-2026-12-04-o1.json,candidates/fwht-groups-2026-12-05-p1.json \
  --jobs 16 --rep-ms 10 --compile-timeout 150 --out $OUT/p3.md > $OUT/p3.log 2>&1)
tail -3 $OUT/p3.log
