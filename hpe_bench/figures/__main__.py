"""``python -m hpe_bench.figures``."""
from . import main

raise SystemExit(main())
