"""A real gRPC client resolving `xds:///SERVICE` through the bootstrap in GRPC_XDS_BOOTSTRAP (its
C-core's xDS resolver: no hand-written xDS client). Calls `/echo.Echo/Who` without pause and
prints, every 50 ms, one JSON line: the time (ms since the epoch), the calls answered by each
server so far, and the failed calls. With `--key-header K...`: one call per key, with header
x-key, printing `{"key": ..., "owner": ...}` per key, then exits."""
import json
import sys
import time

import grpc

service = sys.argv[1]
channel = grpc.insecure_channel("xds:///" + service)
who = channel.unary_unary("/echo.Echo/Who")

if len(sys.argv) > 2 and sys.argv[2] == "--keys":
    for line in sys.stdin:
        key = line.strip()
        if not key:
            continue
        owner = who(b"", timeout=10, metadata=(("x-key", key),)).decode()
        print(json.dumps({"key": key, "owner": owner}), flush=True)
    sys.exit(0)

counts = {}
errors = 0
last_error = ""
next_report = time.time()
while True:
    try:
        name = who(b"", timeout=5).decode()
        counts[name] = counts.get(name, 0) + 1
    except grpc.RpcError as e:
        errors += 1
        last_error = "%s: %s" % (e.code(), e.details())
        time.sleep(0.01)
    now = time.time()
    if now >= next_report:
        print(json.dumps({"t": int(now * 1000), "counts": counts, "errors": errors,
                          "last_error": last_error}), flush=True)
        next_report = now + 0.05
