import sys

from crbnet.cli.app import main

sys.exit(main())
