"""`python -m bench saturate|idle ...`: the same as `sentchat bench ...`."""

import sys

from bench.command import main

sys.exit(main())
