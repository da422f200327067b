"""Scratch (not committed to main): compile the roofline's FWHT launches in 16 processes into the on-disk cache."""
import sys
sys.path.insert(0, "bench")
from gpu_common import run_parallel
from gpu_fwht import DTYPES, LLM, POW2, _cases, _compile_task

if __name__ == "__main__":
    tasks = [(n, str(dt).removeprefix("torch."), v, None) for n, dt, v in _cases(POW2 + LLM, DTYPES, True)]
    left = run_parallel(_compile_task, tasks, 16, 200)
    print(f"{len(tasks)} compiled, {len(left)} did not finish: {left}", flush=True)
