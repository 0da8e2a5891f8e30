"""Fault injection for a real server process: Python imports this module at start-up when its
directory is on the process's PYTHONPATH (`FAULTY_SERVER_ENV` in the tests).

A request whose seed is `$FAULT_SEED` fails in the engine's bookkeeping once its third token is
recorded, the way a real fault there does (a token's text that will not decode, a metric that
raises): the engine ends that request alone with `error`, after its first tokens may already
have reached the client, and serves every other request as usual.
"""

from __future__ import annotations

import os

FAULT_SEED = os.environ.get("FAULT_SEED")

if FAULT_SEED is not None:
    from backtrack.events import TokenEvent
    from server import jobs

    recorded = jobs.Job.record

    def record(
        self: jobs.Job, metrics: jobs.Metrics, events: list[jobs.Event], *rest: object
    ) -> None:
        third_token = any(isinstance(e, TokenEvent) and e.index >= 2 for e in events)
        if self.request.params.seed == int(FAULT_SEED) and third_token:
            raise RuntimeError("injected fault: recording the third token failed")
        recorded(self, metrics, events, *rest)  # type: ignore[arg-type]

    jobs.Job.record = record  # type: ignore[method-assign]
