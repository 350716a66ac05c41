"""download_prepared against a loopback HTTP server: success, cut-off transfers, damaged and unsafe zips."""
from __future__ import annotations

import http.server
import io
import threading
import zipfile

import pytest

from stego_lite.data import PREPARED_ZIPS, DownloadError, download_prepared


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


GOOD = _zip({"potsdam/labelled_test.txt": b"1\n", "potsdam/imgs/1.mat": b"x" * 5000})


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[bytes, int | None]] = {}   # path -> (body, announced length or None = exact)

    def do_GET(self):   # noqa: N802 (http.server's naming)
        if self.path not in self.routes:
            self.send_error(404)
            return
        body, announced = self.routes[self.path]
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(announced if announced is not None else len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args):   # keep test output clean
        pass


@pytest.fixture
def server():
    _Handler.routes = {
        "/potsdam.zip": (GOOD, None),
        "/loose.zip": (_zip({"labelled_test.txt": b"1\n", "gt/1.mat": b"y"}), None),
        "/cut.zip": (GOOD[:len(GOOD) // 2], len(GOOD)),
        "/garbage.zip": (b"<html>not found</html>" * 10, None),
        "/crc.zip": (_zip({"potsdam/a.txt": b"A" * 2000}, zipfile.ZIP_STORED).replace(b"A" * 2000,
                                                                                  b"A" * 1999 + b"B"), None),
        "/evil.zip": (_zip({"../evil.txt": b"gotcha"}), None),
    }
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _leftovers(root):
    return sorted(p.name for p in root.iterdir() if p.name != ".lock")


def test_download_extracts_into_place(server, tmp_path):
    folder = download_prepared("potsdam", tmp_path, url=f"{server}/potsdam.zip")
    assert folder == tmp_path / "potsdam"
    assert (folder / "labelled_test.txt").read_text() == "1\n"
    assert (folder / "imgs" / "1.mat").stat().st_size == 5000
    assert _leftovers(tmp_path) == ["potsdam"]
    # already there: returned without touching the network (this address would fail)
    assert download_prepared("potsdam", tmp_path, url=f"{server}/missing.zip") == folder


def test_zip_of_loose_files_becomes_the_dataset_folder(server, tmp_path):
    folder = download_prepared("cityscapes", tmp_path, url=f"{server}/loose.zip")
    assert (folder / "labelled_test.txt").is_file() and (folder / "gt" / "1.mat").is_file()


@pytest.mark.parametrize("route, message", [
    ("/cut.zip", "cut short|broke off"),
    ("/garbage.zip", "not a valid zip"),
    ("/crc.zip", "CRC"),
    ("/evil.zip", "unsafe path"),
    ("/missing.zip", "cannot download"),
])
def test_failures_leave_nothing_behind(server, tmp_path, route, message):
    with pytest.raises(DownloadError, match=message):
        download_prepared("potsdam", tmp_path / "data", url=f"{server}{route}")
    assert _leftovers(tmp_path / "data") == []
    assert not (tmp_path / "evil.txt").exists()


def test_unknown_name_and_known_urls():
    with pytest.raises(ValueError, match="choose one of"):
        download_prepared("imagenet")
    assert PREPARED_ZIPS["cocostuff"].endswith("/stego-public/pytorch_data/cocostuff.zip")
    assert set(PREPARED_ZIPS) == {"cocostuff", "cityscapes", "potsdam", "potsdamraw"}


def test_download_command_line(server, tmp_path, capsys):
    from stego_lite.__main__ import main

    assert main(["download", "potsdam", "--root", str(tmp_path), "--url", f"{server}/potsdam.zip"]) == 0
    assert str(tmp_path / "potsdam") in capsys.readouterr().out
    assert (tmp_path / "potsdam" / "labelled_test.txt").is_file()
