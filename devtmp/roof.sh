# Fifth device call: the roofline run for the README (every kernel, one process), FWHT launches compiled first.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=uuid,driver_version --format=csv,noheader | tee $OUT/gpu5.txt
timeout 200 python devtmp/precompile.py 2>&1 | tail -2
(cd bench && timeout 380 python gpu_roofline.py --host --out $OUT/roof.md > $OUT/roof.log 2>&1)
tail -12 $OUT/roof.log
