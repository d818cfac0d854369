"""`python -m bench.durable ...` (bench/README.md)."""

import sys

from bench.durable.cli import main

sys.exit(main())
