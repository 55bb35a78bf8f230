"""`python -m arvc ...`: the same command line as `arvc ...`."""
import sys

from arvc.cli import main

sys.exit(main())
