#!/usr/bin/env python3
"""Demo webhook receiver on 127.0.0.1: /accounting answers 200; /flaky answers 500 to the first
two attempts of each delivery (by webhook-id), then 200. Prints one line per request."""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

attempts = {}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        event = json.loads(body or b"{}")
        wid = self.headers.get("webhook-id")
        n = attempts[wid] = attempts.get(wid, 0) + 1
        status = 200
        if self.path == "/flaky" and n <= 2:
            status = 500
        signed = "signed" if self.headers.get("webhook-signature") else "unsigned"
        print(f"    handler {self.path:<12} got {event.get('type')} {event.get('subject')} "
              f"data={json.dumps(event.get('data'))} webhook-id={wid} attempt={n} {signed} -> {status}",
              flush=True)
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({"received": event.get("id"), "status": status}).encode())

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
