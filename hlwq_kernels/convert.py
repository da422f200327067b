"""``python -m hlwq_kernels.convert``: the converter's command line (see ``hlwq_kernels.checkpoint.cli``)."""

import sys

from hlwq_kernels.checkpoint.cli import main

if __name__ == "__main__":
    sys.exit(main())
