"""examples/serve.py: the standard-library HTTP server answers real requests on 127.0.0.1."""
from __future__ import annotations

import base64
import importlib.util
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from engine import ImageClusterer, load_model

SERVE = Path(__file__).resolve().parents[1] / "examples" / "serve.py"


@pytest.fixture(scope="module")
def serve_module():
    spec = importlib.util.spec_from_file_location("imgcluster_serve_example", SERVE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server(serve_module, three_groups, tmp_path_factory):
    """(base URL, fitted clusterer) for a server on 127.0.0.1 with a free port, in a thread."""
    clusterer = ImageClusterer(model="pixels", device="cpu", k="2:5").fit([three_groups])
    path = clusterer.save(tmp_path_factory.mktemp("serve") / "model.imgc")
    model = load_model(path, device="cpu")
    httpd = serve_module.make_server(model, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", clusterer
    httpd.shutdown()
    httpd.server_close()
    model.close()


def _post(url, body: bytes, content_type="application/octet-stream"):
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_one_raw_image(server):
    url, clusterer = server
    status, answer = _post(url + "/predict", clusterer.paths_[0].read_bytes(), "image/jpeg")
    assert status == 200
    assert answer["labels"] == [int(clusterer.labels_[0])] and answer["errors"] == [None]
    assert answer["distances"][0] >= 0 and 0 <= answer["confidences"][0] <= 1


def test_json_batch_with_a_corrupt_item(server):
    url, clusterer = server
    images = [clusterer.paths_[i].read_bytes() for i in (0, 25, 59)]
    items = [base64.b64encode(b).decode() for b in images]
    items.insert(1, base64.b64encode(b"\xff\xd8\xff\xe0 corrupt").decode())
    items.append("%%% not base64 %%%")
    status, answer = _post(url + "/predict", json.dumps({"images": items}).encode(), "application/json")
    assert status == 200
    want = [int(clusterer.labels_[i]) for i in (0, 25, 59)]
    assert answer["labels"] == [want[0], -1, want[1], want[2], -1]
    assert answer["errors"][0] is None and answer["errors"][1] and answer["errors"][4] == "invalid base64"
    assert answer["distances"][1] is None and answer["confidences"][4] is None


def test_corrupt_raw_image_and_bad_requests(server):
    url, _ = server
    status, answer = _post(url + "/predict", b"GIF89a truncated")
    assert status == 200 and answer["labels"] == [-1] and "image" in answer["errors"][0]
    assert _post(url + "/predict", b"{}", "application/json")[0] == 400
    assert _post(url + "/elsewhere", b"x")[0] == 404
    with urllib.request.urlopen(url + "/health", timeout=30) as response:
        assert json.loads(response.read())["k"] == server[1].k_
