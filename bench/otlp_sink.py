#!/usr/bin/env python3
"""A local OTLP/HTTP trace endpoint that takes every export and answers 200, for measuring
tracing's cost without a collector (bench/README.md, "Tracing"):

    .venv/bin/python bench/otlp_sink.py --port 4318 &
    .venv/bin/python bench/load.py --scenarios reserve \
        --server-arg=--otlp-endpoint=http://127.0.0.1:4318/v1/traces

It prints the exports and bytes received so far every --report-s seconds, and decodes
nothing (a collector's work is not the service's cost).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=4318)
    parser.add_argument("--report-s", type=float, default=10.0)
    args = parser.parse_args()
    totals = {"requests": 0, "bytes": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            totals["requests"] += 1
            totals["bytes"] += len(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        while True:
            time.sleep(args.report_s)
            print(f"exports {totals['requests']}, {totals['bytes']} bytes", file=sys.stderr)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
