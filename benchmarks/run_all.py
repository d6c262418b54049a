"""Run the benchmarks (``make bench``): the performance suite, then the recommender's
validation, the large-N memory benchmark, the tracker's cost and the memory-layout rule;
each prints its own table.

``bench_probe.py``, ``bench_compare.py`` and ``bench_race.py`` are not run on their own: the suite
runs their rows. python benchmarks/run_all.py [--quick]
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main() -> int:
    here = Path(__file__).resolve().parent
    extra = [a for a in sys.argv[1:] if a == "--quick"]
    failed = []
    names = ["perf_suite.py", "bench_recommend.py", "bench_large_n.py", "bench_tracker.py",
             "bench_layout.py"]  # fmt: skip
    for script in (here / n for n in names if (here / n).exists()):
        print(f"\n=== {script.name} ===", flush=True)
        if subprocess.run([sys.executable, str(script), *extra]).returncode != 0:
            failed.append(script.name)
    if failed:
        print(f"\nbenchmarks that crashed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
