"""``python -m transferlab``: the same command line as the ``transferlab`` console script."""
import sys

from transferlab.pipeline.cli import main

sys.exit(main())
