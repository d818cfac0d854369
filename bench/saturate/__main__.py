"""`python -m bench.saturate saturate|idle ...`: the same as `sentchat bench ...`."""

import sys

from bench.saturate.cli import main

sys.exit(main())
