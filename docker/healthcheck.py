"""Exit 0 when the local server answers `GET /health` with 200, else 1 (Docker's HEALTHCHECK).

It reads the same `BACKTRACK_PORT` and `BACKTRACK_API_KEY` (or `BACKTRACK_API_KEY_FILE`) variables
as the server, so changing the port needs no second edit. Standard library only: the image has no
curl.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_SECONDS = 4.0


def health_url() -> str:
    return f"http://127.0.0.1:{os.environ.get('BACKTRACK_PORT', '8000')}/health"


def is_healthy(url: str, api_key: str | None) -> bool:
    """True on a 200; a refused connection, a timeout or 503 (still loading) are all unhealthy."""
    request = urllib.request.Request(url)
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def api_key() -> str | None:
    """The server's key, from the variable or the file it names (stripped, as the server does)."""
    path = os.environ.get("BACKTRACK_API_KEY_FILE")
    if path:
        try:
            with open(path) as key_file:
                return key_file.read().strip() or None
        except OSError:
            return None
    return os.environ.get("BACKTRACK_API_KEY")


def main() -> int:
    url = health_url()
    healthy = is_healthy(url, api_key())
    print(f"{url}: {'healthy' if healthy else 'unhealthy'}")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
