"""The inference server: serves a backtrack checkpoint over HTTP (native SSE, TGI, OpenAI)."""

from importlib.metadata import PackageNotFoundError, version

from backtrack.threads import prefer_sleeping_waits

prefer_sleeping_waits()  # before torch loads OpenMP: idle threads sleep on shared cores

try:
    __version__ = version("backtrack-serving")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
