"""The inference server: serves a backtrack checkpoint over HTTP (native SSE, TGI, OpenAI)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("backtrack-serving")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
