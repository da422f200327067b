"""Table launches of the FWHT under compute-sanitizer (memcheck), forward and inverse, with and without signs:

    compute-sanitizer --tool memcheck python scripts/memcheck_fwht.py 13824 27648

Each size runs 300 rows of float32 (and --dtypes), enough for every persistent program to take several rows."""

from __future__ import annotations

import argparse

import torch

from hlwq_kernels import fwht
from hlwq_kernels.ops.hadamard import random_signs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", type=int, nargs="+")
    parser.add_argument("--dtypes", default="float32")
    args = parser.parse_args()
    for dtype in args.dtypes.split(","):
        for n in args.sizes:
            x = torch.randn(300, n, device="cuda").to(getattr(torch, dtype))
            signs = random_signs(n, 1, device="cuda")
            for s in (None, signs):
                for inverse in (False, True):
                    fwht(x, signs=s, inverse=inverse)
            torch.cuda.synchronize()
            print(f"{n} {dtype}: ran")


if __name__ == "__main__":
    main()
