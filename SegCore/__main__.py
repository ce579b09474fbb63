"""`python -m SegCore ...` is the same as `segcore ...`."""

import sys

from SegCore.cli import main

if __name__ == "__main__":
    sys.exit(main())
