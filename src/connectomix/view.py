"""``connectomix view DATASET_DIR``: the dataset in a local Neuroglancer, offline.

Two servers in this process, both bound to localhost: a static file server with CORS over the dataset folder
(``results/{dataset}``: ``volume.zarr`` and ``precomputed/``), and the ``neuroglancer`` package's viewer server,
which serves its bundled client and holds the viewer state: the EM (``volume.zarr/raw``), the segmentation with its
meshes and skeletons, and the annotation layers present (synapses, somata, two-photon matches;
``connectomix.export.neuroglancer.state``). Nothing is fetched from the internet.

``--screenshot PNG`` starts headless Chromium on the viewer, waits until the visible data is loaded (the client's
screenshot waits for its chunks) and writes a PNG, then exits: what the screenshot test runs.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import webbrowser
from pathlib import Path

import numpy as np

from connectomix.export.annotations import present
from connectomix.export.neuroglancer import state
from connectomix.io import read_meta

LOCALHOST = "127.0.0.1"
CHROMIUM = ("chromium", "chromium-browser", "google-chrome")


def segmentation_info(path) -> dict:
    """A precomputed segmentation's info without the folders it names (mesh, skeletons, segment properties) that
    hold no info yet: the client would wait for them forever (a run stopped before the mesh or export stage)."""
    path = Path(path)
    info = json.loads(path.read_text())
    for key in ("mesh", "skeletons", "segment_properties"):
        if isinstance(info.get(key), str) and not (path.parent / info[key] / "info").exists():
            del info[key]
    return info


class _CorsHandler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if path.name == "info" and path.is_file():
            info = json.loads(path.read_text())
            if info.get("type") == "segmentation":
                body = json.dumps(segmentation_info(path)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
        super().do_GET()

    def end_headers(self):
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Allow-Headers", "range")
        self.send_header("Access-Control-Expose-Headers", "content-range")
        super().end_headers()

    def log_message(self, *args):  # quiet: Neuroglancer asks for hundreds of chunks
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # the client cancelled a request it no longer needs
            super().handle_error(request, client_address)


def serve_folder(folder, port: int = 0) -> http.server.ThreadingHTTPServer:
    """A static file server with CORS over ``folder``, bound to localhost, in a daemon thread (``server_port`` says
    the port; ``shutdown()`` stops it). Missing files answer 404, as Neuroglancer expects; a segmentation's info
    is served as :func:`segmentation_info`."""
    handler = functools.partial(_CorsHandler, directory=str(folder))
    server = _Server((LOCALHOST, port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _largest_meshes(mesh_dir: Path, top: int) -> list[int]:
    sizes = [(p.stat().st_size, int(p.name.split(":")[0])) for p in mesh_dir.glob("*:0:0")] if mesh_dir.is_dir() else []
    return [label for _, label in sorted(sizes, reverse=True)[:top]]


def dataset_state(dataset_dir, base_url: str, top: int = 20) -> dict:
    """The viewer state of a dataset folder served at ``base_url``: raw, segmentation (meshes, skeletons) and the
    annotation layers present; the ``top`` largest meshes selected, with the 3D view showing meshes only."""
    dataset_dir = Path(dataset_dir)
    seg_dir = dataset_dir / "precomputed" / "segmentation"
    if not (seg_dir / "info").exists():
        raise FileNotFoundError(f"no precomputed segmentation at {seg_dir}: run the workflow (export) first")
    meta = read_meta(dataset_dir / "volume.zarr", "segmentation")
    st = state(base_url, meta.voxel_size, meta.spatial_shape, meta.offset_nm, _largest_meshes(seg_dir / "mesh", top),
               annotations=present(dataset_dir / "precomputed"))
    has = {"raw": (dataset_dir / "volume.zarr" / "raw").is_dir(),
           "skeletons": (seg_dir / "skeletons" / "info").exists()}
    st["layers"] = [layer for layer in st["layers"] if has.get(layer["name"], True)]
    st["showSlices"] = False  # the 3D panel draws meshes and skeletons, not the cross-sections
    # each panel filled by the volume (about 350 pixels across), the 3D one seen obliquely
    st["crossSectionScale"] = max(meta.spatial_shape[1:]) / 350
    st["projectionScale"] = max(n * v for n, v in zip(meta.spatial_shape, meta.voxel_size)) / 4
    st["projectionOrientation"] = [-0.3, 0.2, 0.05, 0.93]
    return st


def open_viewer(dataset_dir, port: int = 0, data_port: int = 0, top: int = 20):
    """Serve ``dataset_dir`` and start a Neuroglancer viewer on it (both on localhost). Returns (viewer, file
    server); ``viewer.get_viewer_url()`` is the page to open."""
    import neuroglancer

    files = serve_folder(dataset_dir, data_port)
    neuroglancer.set_server_bind_address(LOCALHOST, port)
    viewer = neuroglancer.Viewer()
    viewer.set_state(neuroglancer.ViewerState(dataset_state(
        dataset_dir, f"http://{LOCALHOST}:{files.server_port}", top)))
    return viewer, files


def find_chromium(path: str | None = None) -> str | None:
    """The Chromium binary: ``path``, else the first of chromium, chromium-browser, google-chrome on PATH."""
    if path:
        return path if Path(path).exists() or shutil.which(path) else None
    return next((shutil.which(name) for name in CHROMIUM if shutil.which(name)), None)


def _signal_group(process: subprocess.Popen, sig) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def screenshot(viewer, out, chromium: str, size=(1200, 600), timeout_s: float = 120.0) -> np.ndarray:
    """Open ``viewer`` in headless Chromium (software WebGL), wait for its data, write the PNG ``out``; returns the
    pixels (height, width, RGBA). A clear error when Chromium does not connect or the data do not load in time."""
    import tempfile

    result: list = []
    done = threading.Event()
    # Chromium's helper processes may still write to the profile while it closes: leave what they add behind
    with tempfile.TemporaryDirectory(prefix="connectomix-chromium-", ignore_cleanup_errors=True) as profile:
        browser = subprocess.Popen(
            [chromium, "--headless=new", "--no-sandbox", "--disable-gpu-sandbox", "--use-angle=swiftshader",
             "--enable-unsafe-swiftshader", "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}",
             f"--window-size={size[0]},{size[1]}", viewer.get_viewer_url()],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            with viewer.config_state.txn() as s:
                s.show_ui_controls = False
                s.show_panel_borders = False
                s.viewer_size = list(size)
            start = time.monotonic()
            viewer.async_screenshot(lambda reply: (result.append(reply), done.set()))
            if not done.wait(timeout_s):
                raise TimeoutError(f"no screenshot from Chromium after {timeout_s:.0f} s ({chromium})")
            seconds = time.monotonic() - start
        finally:  # the whole process group: Chromium's helpers too
            _signal_group(browser, signal.SIGTERM)
            try:
                browser.wait(10)
            except subprocess.TimeoutExpired:
                _signal_group(browser, signal.SIGKILL)
                browser.wait(10)
    reply = result[0].screenshot
    Path(out).write_bytes(reply.image)
    print(f"screenshot {out}: {reply.width} x {reply.height} after {seconds:.1f} s")
    return reply.image_pixels


def add_arguments(parser) -> None:
    parser.add_argument("dataset_dir", help="a dataset's results folder (results/{dataset})")
    parser.add_argument("--port", type=int, default=0, help="viewer port (default: a free one)")
    parser.add_argument("--data-port", type=int, default=0, help="port of the data file server (default: a free one)")
    parser.add_argument("--top", type=int, default=20, help="largest meshed segments selected (default 20)")
    parser.add_argument("--no-browser", action="store_true", help="print the URL; do not open a browser")
    parser.add_argument("--screenshot", default=None,
                        help="write a PNG from headless Chromium once the data are loaded, then exit")
    parser.add_argument("--chromium", default=None, help="Chromium binary for --screenshot (default: on PATH)")
    parser.add_argument("--size", type=int, nargs=2, default=(1200, 600), metavar=("W", "H"),
                        help="screenshot size, pixels (default 1200 600)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the screenshot")


def run(args) -> int:
    """Serve the dataset and open the viewer (until Ctrl-C), or take one screenshot."""
    viewer, files = open_viewer(args.dataset_dir, args.port, args.data_port, args.top)
    url = viewer.get_viewer_url()
    try:
        if args.screenshot:
            chromium = find_chromium(args.chromium)
            if chromium is None:
                raise FileNotFoundError("no Chromium found (scripts/install-system-deps.sh installs it)")
            screenshot(viewer, args.screenshot, chromium, tuple(args.size), args.timeout)
            return 0
        print(f"Neuroglancer: {url}\ndata: http://{LOCALHOST}:{files.server_port}/ ({args.dataset_dir})\n"
              "Ctrl-C stops the servers.", flush=True)
        if not args.no_browser:
            webbrowser.open(url)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        files.shutdown()
