"""Super-resolution at any size: the ``infd-sr`` command, runnable from a checkout
(``python recipes/super_resolution.py --help``).

The program is :mod:`infd_solve.cli.super_resolution`; this file only runs it.
"""

import sys

from infd_solve.cli.super_resolution import main

if __name__ == "__main__":
    sys.exit(main(prog="super_resolution.py"))
