#!/usr/bin/env python3
"""A webhook receiver for the service tests, on the standard library only.

Usage: webhook_receiver.py LOG_FILE FAIL_FIRST [CERT KEY]
Listens on 127.0.0.1 (a free port, printed as "port N" on stdout), over TLS when CERT and KEY
are given. Answers the first FAIL_FIRST POSTs with 500 and the rest with 204, and appends one
JSON line per POST to LOG_FILE: the headers that matter and the body.
"""
import json
import ssl
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

LOG, FAIL_FIRST = sys.argv[1], int(sys.argv[2])
seen = 0


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        global seen
        body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
        seen += 1
        status = 500 if seen <= FAIL_FIRST else 204
        with open(LOG, "a") as f:
            f.write(json.dumps({
                "attempt": seen,
                "answered": status,
                "event_id": self.headers.get("ClassGuard-Event-Id"),
                "timestamp": self.headers.get("ClassGuard-Timestamp"),
                "signature": self.headers.get("ClassGuard-Signature"),
                "content_type": self.headers.get("Content-Type"),
                "body": body,
            }) + "\n")
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = HTTPServer(("127.0.0.1", 0), Handler)
if len(sys.argv) > 4:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[3], sys.argv[4])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
print("port", server.server_address[1], flush=True)
server.serve_forever()
