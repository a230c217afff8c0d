"""``python -m isnet_kernels``: the ``isnet`` command line (:mod:`isnet_kernels.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
