#!/usr/bin/env python3
"""A kdiag (and Kube Diagnoser) HTTP plugin in plain Python: no dependencies.

The protocol: kdiag POSTs the whole Abnormal as JSON; the plugin answers 200 with the whole
Abnormal back. It may change status.context, status.commandExecutors, status.profilers and
status.rootCause; anything else must come back unchanged. Any other answer fails this step, and
kdiag moves on to the next processor.

This diagnoser reads the podInformation a pod-collector wrote and identifies pods the kubelet
evicted for disk pressure. Run it, then register it:

    python3 disk_pressure_diagnoser.py --port 8099 &
    kubectl apply -f registration.yaml

Finding nothing is not success: it answers 422 with what it checked, so the step fails with that
message and the next diagnoser gets its turn.
"""

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def diagnose(abnormal):
    """Returns (root_cause or None, what was checked)."""
    context = dict(abnormal.get("status", {}).get("context") or {})
    context.update(abnormal.get("spec", {}).get("context") or {})
    pods = context.get("podInformation") or []
    evicted = [
        p for p in pods
        if p.get("status", {}).get("reason") == "Evicted"
        and "ephemeral" in p.get("status", {}).get("message", "").lower()
    ]
    if not evicted:
        return None, f"checked {len(pods)} pods for disk-pressure evictions; none found"
    first = evicted[0]
    name = f"{first['metadata'].get('namespace', '')}/{first['metadata']['name']}"
    return {
        "summary": f"pod {name} was evicted for using too much ephemeral storage",
        "reason": "EvictedForDiskPressure",
        "suggestion": "set an ephemeral-storage limit that fits, or move the data to a volume",
        "evidence": [
            {"kind": "PodStatus", "object": f"Pod/{name}", "message": first["status"].get("message", ""),
             "contextKey": "podInformation"}
        ],
    }, ""


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        try:
            abnormal = json.loads(self.rfile.read(length))
        except ValueError as e:
            return self.reply(400, {"error": f"not JSON: {e}"})
        cause, checked = diagnose(abnormal)
        if cause is None:
            return self.reply(422, {"error": checked})
        abnormal.setdefault("status", {})["rootCause"] = cause
        abnormal["status"].setdefault("context", {})["diskPressureEvictions"] = cause["summary"]
        self.reply(200, abnormal)

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):  # quieter than the default
        pass


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8099)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.address, args.port), Handler)
    print(f"listening on {args.address}:{args.port}", flush=True)
    server.serve_forever()
