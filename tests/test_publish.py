"""Publishing an extraction output: the manifest it writes, what it refuses, the Hub upload."""

from __future__ import annotations

import base64
import hashlib
import json
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from huggingface_hub.errors import HfHubHTTPError

from pipeline.publish import MANIFEST_NAME, build_manifest, hub_base_urls, main, upload_to_hub
from pipeline.published import load_manifest
from tests.test_download import closed_port_url, write_extraction

pytestmark = pytest.mark.timeout(120)

EXAMPLES = Path(__file__).resolve().parents[1] / "manifests" / "published"


@pytest.fixture
def extraction(tmp_path: Path) -> Path:
    return write_extraction(tmp_path / "extraction")


def test_publish_writes_a_manifest_that_pins_every_shard(extraction, capsys):
    code = main([str(extraction), "--base-url", "https://data.example.org/lmdir/demo",
                 "--base-url", "s3://lmdir-mirror/demo", "--license", "CC-BY-4.0",
                 "--description", "three tiny shards"])

    assert code == 0
    manifest = load_manifest(extraction / MANIFEST_NAME)
    index = json.loads((extraction / "index.json").read_text())
    assert manifest.name == "demo" and manifest.description == "three tiny shards"
    assert manifest.license == "CC-BY-4.0" and manifest.format_version == 1
    assert manifest.base_urls == ("https://data.example.org/lmdir/demo", "s3://lmdir-mirror/demo")
    assert [(s.name, s.bytes, s.samples, s.sha256) for s in manifest.shards] == \
        [(s["name"], s["bytes"], s["samples"], s["sha256"]) for s in index["shards"]]
    assert manifest.urls(manifest.shards[0]) == ["https://data.example.org/lmdir/demo/000000.tar",
                                                 "s3://lmdir-mirror/demo/000000.tar"]
    assert manifest.provenance.presets == ("tiny",)
    assert manifest.provenance.config_hashes == (index["config_hash"],)
    assert manifest.provenance.models["describer"].revision == "main"
    assert manifest.provenance.models["describer"].commit == "abc123"
    assert manifest.provenance.models["clip"].revision is None
    assert manifest.provenance.models["clip"].commit is None
    assert manifest.embedding_dims == {"E": 512, "W": 512}
    assert manifest.total_samples == 9
    assert "3 shards, 9 samples" in capsys.readouterr().out


def test_hub_repository_urls_become_mirrors(extraction):
    manifest = build_manifest(extraction, hub_base_urls("lmdir/demo-priors"), license="other")
    assert manifest.urls(manifest.shards[0]) == [
        "https://huggingface.co/datasets/lmdir/demo-priors/resolve/main/000000.tar",
        "hf://datasets/lmdir/demo-priors/000000.tar",
    ]


def _edit_index(extraction: Path, edit) -> None:
    index = json.loads((extraction / "index.json").read_text())
    edit(index)
    (extraction / "index.json").write_text(json.dumps(index))


def _append_member(path: Path, name: str, kind: bytes) -> None:
    with tarfile.open(path, "a") as tar:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = "/etc/passwd"
        tar.addfile(info)


REFUSALS = {
    "digest": (lambda d: _edit_index(d, lambda i: i["shards"][1].update(sha256="0" * 64)), "000001.tar: sha256"),
    "size": (lambda d: _edit_index(d, lambda i: i["shards"][1].update(bytes=1)), "bytes, index.json says 1"),
    "missing": (lambda d: (d / "000002.tar").unlink(), "000002.tar: listed in index.json but missing"),
    "samples": (lambda d: _edit_index(d, lambda i: i["shards"][0].update(samples=4)),
                "holds 3 samples, index.json says 4"),
    "model-without-id": (lambda d: _edit_index(d, lambda i: i["models"]["clip"].pop("id")), "models.clip: expected"),
    "path": (lambda d: _edit_index(d, lambda i: i["shards"][0].update(name="../000000.tar")),
             "shards[0].name: '../000000.tar' is not a plain shard file name"),
    "no-index": (lambda d: (d / "index.json").unlink(), "index.json: not found"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_publish_refuses_an_output_it_cannot_vouch_for(extraction, capsys, case):
    damage, message = REFUSALS[case]
    damage(extraction)

    assert main([str(extraction), "--base-url", "https://example.org/x", "--license", "MIT"]) == 2

    assert message in capsys.readouterr().err
    assert not (extraction / MANIFEST_NAME).exists()


def test_publish_refuses_a_shard_with_a_link_member(extraction, capsys):
    shard = extraction / "000001.tar"
    _append_member(shard, "evil.json", tarfile.SYMTYPE)
    _edit_index(extraction, lambda i: i["shards"][1].update(
        bytes=shard.stat().st_size, sha256=hashlib.sha256(shard.read_bytes()).hexdigest()))

    assert main([str(extraction), "--base-url", "https://example.org/x", "--license", "MIT"]) == 2

    assert "refusing to publish: shard 000001.tar: member 'evil.json': link to '/etc/passwd'" in \
        capsys.readouterr().err


@pytest.mark.parametrize("url,field", [("ftp://example.org/x", "base_urls[0]"),
                                       ("https://example.org/x/", "base_urls[0]"),
                                       ("pipe:curl example.org", "base_urls[0]")])
def test_publish_refuses_base_urls_a_downloader_would_refuse(extraction, capsys, url, field):
    assert main([str(extraction), "--base-url", url, "--license", "MIT"]) == 2
    assert f"{field}:" in capsys.readouterr().err


class _HubEndpoint:
    """A local stand-in for the Hub's HTTP API: accepts repo creation, refuses the upload.

    That is as far as an upload can be tested without the network; what arrived shows which
    repository type was created and which files would have been uploaded.
    """

    def __init__(self):
        self.requests: list[tuple[str, str, dict]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                endpoint.requests.append((self.command, self.path, body))
                if self.path == "/api/repos/create":
                    port = self.server.server_address[1]
                    reply, status = {"url": f"http://127.0.0.1:{port}/datasets/{body['organization']}/"
                                            f"{body['name']}"}, 200
                else:
                    reply, status = {"error": "uploads are refused by this test endpoint"}, 403
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def test_hub_upload_creates_a_dataset_repo_and_offers_only_the_shards(extraction):
    manifest = build_manifest(extraction, hub_base_urls("lmdir/demo-priors"), license="other")
    hub = _HubEndpoint()
    try:
        with pytest.raises(HfHubHTTPError, match="403"):
            upload_to_hub(extraction, manifest, "lmdir/demo-priors", token="hf_test_token", endpoint=hub.url)
    finally:
        hub.stop()

    create, preupload = hub.requests[0], hub.requests[1]
    assert create[1] == "/api/repos/create"
    assert {k: create[2].get(k) for k in ("name", "organization", "type")} == \
        {"name": "demo-priors", "organization": "lmdir", "type": "dataset"}
    assert preupload[1] == "/api/datasets/lmdir/demo-priors/preupload/main"
    offered = {f["path"]: f for f in preupload[2]["files"]}
    assert sorted(offered) == [s.name for s in manifest.shards], "no status parquets, stats or index"
    first = (extraction / "000000.tar").read_bytes()
    assert offered["000000.tar"]["size"] == len(first)
    assert base64.b64decode(offered["000000.tar"]["sample"]) == first[:len(base64.b64decode(
        offered["000000.tar"]["sample"]))]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.name)
def test_example_manifests_are_valid_and_marked_as_examples(path):
    manifest = load_manifest(path)
    assert manifest.description.startswith("EXAMPLE ONLY")
    assert all(".invalid/" in url for url in manifest.base_urls)


def test_example_manifest_pins_the_fixture_shards(extraction):
    # The example's digests are real: those of the shards write_extraction makes.
    example = load_manifest(EXAMPLES / "example-demo.json")
    assert example.shards == build_manifest(extraction, ["https://x.invalid/a"], license="MIT").shards


def test_publish_to_hub_reports_a_failed_upload_and_keeps_the_manifest(extraction, monkeypatch, capsys):
    hub = _HubEndpoint()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    try:
        code = main([str(extraction), "--to-hub", "lmdir/demo-priors", "--license", "other"])
    finally:
        hub.stop()

    assert code == 1
    assert "upload to the Hub dataset lmdir/demo-priors failed" in capsys.readouterr().err
    manifest = load_manifest(extraction / MANIFEST_NAME)
    assert manifest.base_urls == tuple(hub_base_urls("lmdir/demo-priors", hub.url))
    assert [p for _, p, _ in hub.requests][:2] == ["/api/repos/create",
                                                   "/api/datasets/lmdir/demo-priors/preupload/main"]


def test_publish_to_an_unreachable_hub_fails_cleanly(extraction, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url().removesuffix("/set"))
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")

    assert main([str(extraction), "--to-hub", "lmdir/demo-priors", "--license", "other"]) == 1

    assert "upload to the Hub dataset lmdir/demo-priors failed" in capsys.readouterr().err
