import sys

from logagent.cli import main

sys.exit(main())
