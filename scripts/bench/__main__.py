"""``python -m scripts.bench``: the benchmarks' command line (``bench.main``)."""

from .main import main

main()
