"""A minimal HTTP prediction server, standard library only: load a model once, answer POST /predict.

    python examples/serve.py results/model.imgc --port 8000 --device cuda
    curl --data-binary @photo.jpg http://127.0.0.1:8000/predict
    curl -H 'Content-Type: application/json' -d '{"images": ["<base64>", "<base64>"]}' http://127.0.0.1:8000/predict

Request body: the raw bytes of one image, or JSON {"images": [base64, ...]} for a batch.
Answer (HTTP 200): {"labels": [...], "distances": [...], "confidences": [...], "errors": [...]};
an item that cannot be decoded gets label -1, null distance/confidence and an error string,
while the other items of the batch still get their clusters. GET /health describes the model.

ThreadingHTTPServer answers each connection in its own thread; they all share the one resident
FittedModel, which is thread-safe (decoding in parallel, one forward at a time on the device).
"""
from __future__ import annotations

import argparse
import base64
import binascii
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from engine import load_model

MAX_BODY = 64 << 20  # bytes; larger requests get 413


def make_server(model, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """An HTTP server answering with `model` (an engine.model.FittedModel); port 0 picks a free one."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            if self.path != "/health":
                return self._send(404, {"error": "not found; POST /predict or GET /health"})
            self._send(200, {"k": model.k, "backbone": model.backbone.name, "device": str(model.device)})

        def do_POST(self):
            if self.path != "/predict":
                return self._send(404, {"error": "not found; POST /predict"})
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 < length <= MAX_BODY:
                self.close_connection = True  # do not read a body we refuse
                if length <= 0:
                    return self._send(400, {"error": "send the image bytes (or JSON) with a Content-Length"})
                return self._send(413, {"error": f"body over {MAX_BODY} bytes"})
            body = self.rfile.read(length)
            bad: dict[int, str] = {}
            if self.headers.get_content_type() == "application/json":
                try:
                    items = json.loads(body)["images"]
                except (ValueError, KeyError, TypeError):
                    items = None
                if not isinstance(items, list):
                    return self._send(400, {"error": 'expected JSON {"images": [base64, ...]}'})
                blobs = []
                for i, item in enumerate(items):
                    try:
                        blobs.append(base64.b64decode(item, validate=True))
                    except (binascii.Error, TypeError, ValueError):
                        bad[i] = "invalid base64"
                        blobs.append(b"")
            else:
                blobs = [body]
            answer = model.predict_bytes(blobs).to_dict()
            for i, reason in bad.items():
                answer["errors"][i] = reason
            self._send(200, answer)

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format, *args):  # quiet; put access logging here
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model file (imgcluster run --save-model / ImageClusterer.save)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--weights", default=None, help="backbone weights file, if not the recorded one")
    # A request is untrusted: a 0.5 MB PNG that claims 13000 x 13000 took 3 s and ~650 MB to
    # decode under the batch tool's limit (179 MP). 40 MP covers any phone or DSLR photo.
    parser.add_argument("--max-pixels", type=int, default=40_000_000,
                        help="refuse images with more pixels than this (default 40,000,000)")
    args = parser.parse_args(argv)
    model = load_model(args.model, device=args.device, weights=args.weights,  # once: the backbone stays resident
                       max_pixels=args.max_pixels)
    server = make_server(model, args.host, args.port)
    print(f"Serving {model} on http://{args.host}:{server.server_port}/predict", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        model.close()


if __name__ == "__main__":
    main()
