"""`python -m benchmarks.aggregation`: see benchmarks/aggregation/bench.py."""

import sys

from benchmarks.aggregation.bench import main

sys.exit(main())
