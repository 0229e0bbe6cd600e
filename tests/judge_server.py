"""A tiny OpenAI-compatible chat-completions server for tests (real HTTP on 127.0.0.1).

It plays the MLLM judge: it decodes the PNG data URLs it receives and answers with scores computed
from them (mean brightness of the last image → 0–10), so rewards vary between candidates and are
deterministic. ``script`` (a list of reply strings) is served first, one per request, to test
malformed replies, fenced JSON, etc. Runs as ``python -m tests.judge_server PORT_FILE`` too.
"""

from __future__ import annotations

import base64
import io
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image


class JudgeServer:
    def __init__(self, script: list[str] | None = None) -> None:
        self.script = list(script or [])
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                if self.path != "/v1/chat/completions":
                    self.send_error(404)
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                reply = outer.script.pop(0) if outer.script else outer.brightness_reply(body)
                if reply == "HTTP500":
                    self.send_error(500)
                    return
                data = json.dumps({"id": "x", "object": "chat.completion", "model": body.get("model"),
                                   "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                                "finish_reason": "stop"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @staticmethod
    def brightness_reply(body: dict) -> str:
        content = body["messages"][-1]["content"]
        urls = [c["image_url"]["url"] for c in content if c["type"] == "image_url"]
        png = base64.b64decode(urls[-1].split(",", 1)[1])
        mean = float(np.asarray(Image.open(io.BytesIO(png)).convert("L")).mean())
        s = round(mean / 25.5, 2)
        return json.dumps({"reasoning": "brightness", "score": [s, s]})

    def __enter__(self) -> JudgeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


if __name__ == "__main__":
    srv = JudgeServer()
    with srv:
        Path(sys.argv[1]).write_text(srv.url)
        srv.thread.join()
