import sys

from vmkit.cli import main

sys.exit(main())
