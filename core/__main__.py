"""``python -m mmassist.core ...``: the ``mmassist`` command, for when its script is not on PATH and under
torchrun (``torchrun --nproc_per_node=2 -m mmassist.core finetune CFG``)."""

import sys

from mmassist.core.cli import main

if __name__ == "__main__":
    sys.exit(main())
