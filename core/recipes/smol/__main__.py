"""Train the smol starter, or ship a run's progress for the next sitting::

    python -m mmassist.core.recipes.smol train runs/smol     # every stage; resumes where it stopped
    python -m mmassist.core.recipes.smol ship runs/smol      # its finished stages / newest checkpoints into progress/
"""

from __future__ import annotations

import argparse
import os
import sys

from mmassist.core.recipes import smol


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(prog="python -m mmassist.core.recipes.smol", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("train", "ship"))
    parser.add_argument("run", help="the run folder (its align/, tune/ and converse/ stages)")
    args = parser.parse_args(argv)
    if args.command == "train":
        print(smol.train(args.run))
    else:
        written = smol.ship(args.run)
        print("\n".join(str(p) for p in written) or "nothing new to ship")
    return 0


if __name__ == "__main__":
    sys.exit(main())
