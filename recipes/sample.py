"""Unconditional samples at any size: the ``infd-sample`` command, runnable from a checkout
(``python recipes/sample.py --help``).

The program is :mod:`infd_solve.cli.sample`; this file only runs it.
"""

import sys

from infd_solve.cli.sample import main

if __name__ == "__main__":
    sys.exit(main(prog="sample.py"))
