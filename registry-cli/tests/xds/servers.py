"""Real gRPC servers for the xDS tests: one per name given, each answering `/echo.Echo/Who` with
its own name (raw bytes: no protobuf, so no generated code). Prints one JSON line per server
(`{"name": ..., "port": ...}`), then serves until stdin closes."""
import json
import sys
from concurrent import futures

import grpc


def serve(name):
    def who(request, context):
        return name.encode()

    handler = grpc.method_handlers_generic_handler(
        "echo.Echo", {"Who": grpc.unary_unary_rpc_method_handler(who)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


servers = []
for name in sys.argv[1:]:
    server, port = serve(name)
    servers.append(server)
    print(json.dumps({"name": name, "port": port}), flush=True)
sys.stdin.read()
for s in servers:
    s.stop(0)
