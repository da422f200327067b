"""``python -m hlwq_kernels.eval``: the quality study's command line (see ``hlwq_kernels.study.run``);
``--decoders`` runs the decoder perplexity study (``hlwq_kernels.study.decoder_study``)."""

import sys

from hlwq_kernels.study.run import main

if __name__ == "__main__":
    sys.exit(main())
