"""`python -m benchmarks.faulty_server`: the server, whose batched step fails once the file named
by `BENCH_FAIL_STEPS_FILE` exists (the soak's failing-step phase, `benchmarks.soak_edges`).

A step that raises is what a sticky device error or a bad kernel looks like to the engine; the
soak checks that such a replica turns unhealthy instead of failing every request while Ready.
"""

from __future__ import annotations

import os
from pathlib import Path

from backtrack.batch import BatchDecoder, StepReport
from server.__main__ import main

FLAG = Path(os.environ["BENCH_FAIL_STEPS_FILE"])
_step = BatchDecoder.step


def failing_step(self: BatchDecoder) -> StepReport:
    if FLAG.exists():
        raise RuntimeError("injected step failure (the soak's failing-step phase)")
    return _step(self)


if __name__ == "__main__":
    BatchDecoder.step = failing_step  # type: ignore[method-assign]
    main()
