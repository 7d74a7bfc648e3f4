"""Container health check for HTTP services: exit 0 when GET URL answers 2xx.

Usage: ``python /opt/longshore/http-healthcheck.py http://127.0.0.1:8080/api/status``.
Standard library only, so it runs in any image built from the shared pattern.
"""

import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    """Probe ``argv[1]`` once with a short timeout; 0 on 2xx, 1 otherwise."""
    url = argv[1] if len(argv) > 1 else "http://127.0.0.1:8080/api/status"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 (fixed local URL)
            return 0 if 200 <= response.status < 300 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
