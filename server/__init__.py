"""The inference server: serves a backtrack checkpoint over HTTP (native SSE, TGI, OpenAI)."""

from importlib.metadata import PackageNotFoundError, version

from backtrack.threads import bound_spin_waits

bound_spin_waits()  # before torch loads OpenMP: idle threads do not spin for long

try:
    __version__ = version("backtrack-serving")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
