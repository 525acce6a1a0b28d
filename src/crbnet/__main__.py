"""``python -m crbnet``: the command line (:mod:`crbnet.cli.app`)."""

import sys

from crbnet.cli.app import main

sys.exit(main())
