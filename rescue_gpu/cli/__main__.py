"""``python -m rescue_gpu.cli``: the ``rescue`` app."""

import sys

from .app import main

sys.exit(main())
