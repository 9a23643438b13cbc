"""Layout to image: the ``infd-layout`` command, runnable from a checkout
(``python recipes/layout_to_image.py --help``).

The program is :mod:`infd_solve.cli.layout`; this file only runs it.
"""

import sys

from infd_solve.cli.layout import main

if __name__ == "__main__":
    sys.exit(main(prog="layout_to_image.py"))
