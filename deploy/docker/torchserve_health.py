"""HEALTHCHECK for the TorchServe image: GET /ping with the inference key (token auth is on).

    python torchserve_health.py [URL] [KEY_FILE]
        (default http://127.0.0.1:8080/ping, /home/model-server/key_file.json)

Exit 0 when TorchServe answers 200 "Healthy"; 1 otherwise (no key file yet, key expired, down).
"""
from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else "http://127.0.0.1:8080/ping"
    key_file = argv[2] if len(argv) > 2 else "/home/model-server/key_file.json"
    try:
        with open(key_file) as f:
            key = json.load(f)["inference"]["key"]
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(request, timeout=3) as reply:
            body = json.loads(reply.read())
    except (OSError, KeyError, ValueError) as err:
        print(f"{url}: {err}", file=sys.stderr)
        return 1
    print(f"{url}: {body.get('status')}", file=sys.stderr)
    return 0 if body.get("status") == "Healthy" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
