"""Inpainting at any size: the ``infd-inpaint`` command, runnable from a checkout
(``python recipes/inpaint.py --help``).

The program is :mod:`infd_solve.cli.inpaint`; this file only runs it.
"""

import sys

from infd_solve.cli.inpaint import main

if __name__ == "__main__":
    sys.exit(main(prog="inpaint.py"))
