"""``python -m tokenreduce``: the ``tokenreduce`` command."""

import sys

from .cli import main

sys.exit(main())
