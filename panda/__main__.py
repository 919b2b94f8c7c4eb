"""``python -m panda <command>`` = the ``panda`` console script."""

import sys

from panda.cli import main

sys.exit(main())
