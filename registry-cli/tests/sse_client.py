#!/usr/bin/env python3
"""Follows `registry serve`'s change stream with the standard library only.

Usage: sse_client.py URL [COUNT]. Prints each event as one JSON line
{"event": ..., "id": ..., "data": {...}} and stops after COUNT events (default: never).
On a dropped connection it reconnects with Last-Event-ID, as a browser's EventSource does.
"""

import json
import sys
import time
import urllib.request


def follow(url, count=None):
    last_id = None
    seen = 0
    while count is None or seen < count:
        req = urllib.request.Request(url, headers={"Accept": "text/event-stream"})
        if last_id:
            req.add_header("Last-Event-ID", last_id)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                event, data = "message", []
                for raw in resp:
                    line = raw.decode("utf-8").rstrip("\r\n")
                    if line == "":
                        if data:
                            yield {"event": event, "id": last_id, "data": json.loads("\n".join(data))}
                            seen += 1
                            if count is not None and seen >= count:
                                return
                        event, data = "message", []
                    elif line.startswith(":"):
                        continue  # keep-alive comment
                    else:
                        field, _, value = line.partition(":")
                        value = value[1:] if value.startswith(" ") else value
                        if field == "event":
                            event = value
                        elif field == "id":
                            last_id = value
                        elif field == "data":
                            data.append(value)
        except OSError as e:
            print(f"reconnecting after: {e}", file=sys.stderr)
            time.sleep(0.5)


if __name__ == "__main__":
    n = int(sys.argv[2]) if len(sys.argv) > 2 else None
    for ev in follow(sys.argv[1], n):
        print(json.dumps(ev), flush=True)
