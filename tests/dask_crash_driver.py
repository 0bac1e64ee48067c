"""tests/crash_driver.py's graph on a Dask LocalCluster: ``python dask_crash_driver.py STORE``.

Its CPU tasks run on a LocalCluster of threads that the run owns (so the cluster dies
with the driver when tests/test_dask_processes.py SIGKILLs it); it prints ``done NAME``
for each ``done`` event (sent once the result is committed), as crash_driver.py does.
"""

from __future__ import annotations

import sys

import crash_driver

import asyncgraph as ag


def main(store: str) -> int:
    def on_event(event: ag.Event) -> None:
        if event.kind is ag.EventKind.DONE:
            print("done", event.task, flush=True)

    backend = ag.DaskBackend(processes=False, n_workers=2)
    final = ag.run_sync(crash_driver.build(), store=store, backend=backend, on_event=on_event)
    bad = {n: s.value for n, s in final.status.items() if s is not ag.State.DONE}
    print("finished", bad or "ok", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
