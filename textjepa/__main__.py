import sys

from textjepa.cli import main

sys.exit(main())
