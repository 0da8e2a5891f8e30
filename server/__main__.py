"""`python -m server --checkpoint DIR [--host H] [--port P] ...` (or `backtrack-serve`).

Every flag has a `BACKTRACK_<NAME>` environment variable; `--help` lists them. A bad setting or
a checkpoint that cannot be served ends the process with a message and exit status 2 or 1.
On SIGTERM the server stops taking requests, lets in-flight ones finish for `shutdown_timeout`
seconds, then ends the rest with a `done` event whose finish reason is `shutdown`.
Connections are bounded before any request reaches the app: `server.connection` (the request
head's deadline and size) and uvicorn's `limit_concurrency` (`max_connections`).
"""

from __future__ import annotations

import logging
import sys
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from server.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:  # fastapi loads with the app, after the settings are checked
    from fastapi import FastAPI

log = logging.getLogger("server")


class _Server(uvicorn.Server):
    """uvicorn, plus: tell the engine to drain before uvicorn waits for open streams."""

    def __init__(self, config: uvicorn.Config, settings: Settings, app: FastAPI) -> None:
        super().__init__(config)
        self.settings, self.app = settings, app
        self.fatal: str | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        engine = self.app.state.engine
        if engine is not None:
            engine.begin_shutdown(self.settings.shutdown_timeout)
        super().handle_exit(sig, frame)

    def on_fatal(self, message: str) -> None:
        log.error(message)
        self.fatal = message
        self.should_exit = True


def main(argv: list[str] | None = None) -> None:
    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv)
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    from server.app import create_app  # after the settings: a bad flag fails without loading torch
    from server.connection import guarded_protocol

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.shutdown_timeout) + 5,
        http=guarded_protocol(settings.header_timeout),
        h11_max_incomplete_event_size=settings.max_header_bytes,
        limit_concurrency=settings.max_connections,
    )
    uvicorn_server = _Server(config, settings, app)
    app.state.on_fatal = uvicorn_server.on_fatal
    uvicorn_server.run()
    if uvicorn_server.fatal is not None:
        sys.exit(1)


if __name__ == "__main__":
    main()
