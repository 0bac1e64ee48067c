"""Run every benchmark in turn: overhead, mixed, micro_spawn.

Usage:  python benchmarks/run_all.py [--quick] [--json-dir DIR]

A full run takes about 6-7 minutes on a 2-core machine; --quick about 1 minute. With
--json-dir, each benchmark also writes DIR/NAME.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["overhead", "mixed", "micro_spawn"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json-dir", metavar="DIR")
    p.add_argument("--only", help="comma-separated subset of " + ",".join(BENCHMARKS))
    args = p.parse_args()
    names = args.only.split(",") if args.only else BENCHMARKS
    if args.json_dir:
        Path(args.json_dir).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    failed = []
    for name in names:
        cmd = [sys.executable, str(HERE / f"{name}.py")]
        if args.quick:
            cmd.append("--quick")
        if args.json_dir:
            cmd += ["--json", str(Path(args.json_dir) / f"{name}.json")]
        print(f"\n=== {name} ===", flush=True)
        t = time.perf_counter()
        if subprocess.run(cmd).returncode:
            failed.append(name)
        print(f"({name}: {time.perf_counter() - t:.0f} s)", flush=True)
    total = time.perf_counter() - t0
    print(f"\nall benchmarks: {total:.0f} s" + (f"; FAILED: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
