"""The cyclic garbage collector's settings for a serving process.

A serving process allocates in bursts: a dispatcher tick builds one planner
view per ready task (10,000 on a big board), a list call one message per row.
With CPython's defaults a young collection runs every 700 net allocations,
and every few of those ends in a full collection that walks every object the
process holds, the imported modules and the service's long-lived parts
included. Measured on the 10,000-task tick (``bench/kanban.py``): with the
defaults the real tick took 100 to 230 ms, most of it in the collector.

:func:`settle_for_serving`, called once the service is built and before it
serves, moves what exists then (modules, settings, the app's parts) into the
permanent generation (``gc.freeze``), so no collection walks it again, and
raises the young threshold so a burst's garbage is collected in fewer, larger
passes. Reference counting still frees everything without cycles at once;
only cyclic garbage waits a little longer.
"""

from __future__ import annotations

import gc

#: Net allocations before a young collection (CPython's default is 700).
YOUNG_THRESHOLD = 10_000


def settle_for_serving() -> None:
    """Freeze what the process holds now and raise the young threshold.

    Call it once, after the service's parts are built and before serving.
    The older generations keep their thresholds.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
