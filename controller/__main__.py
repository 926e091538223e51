"""``python -m controller`` is ``centerctl``."""

import sys

from controller.cli import main

sys.exit(main())
