"""``python -m ui [options]``: the same as ``mmassist ui``."""

import sys

from core.cli import main

if __name__ == "__main__":
    sys.exit(main(["ui", *sys.argv[1:]]))
