import sys

from connectomix.cli import main

sys.exit(main())
