"""Face enhancement through HTTP: faces per second, latency and where the time goes.

    .venv/bin/python bench/faces.py            # ~8 min on 2 busy cores: both background models
    .venv/bin/python bench/faces.py --quick    # ~4 min: realesr-animevideov3 only, fewer requests

One run starts its own local S3 (SeaweedFS) and Ray, deploys the app with ``serve_app.app.build`` and posts
``POST /v1/face-enhance`` from 1 and 4 closed-loop clients, with images of 1 and 3 faces.
Ray's workers run at this process's niceness (``bench/stack.py``).

The networks are the real architectures: GFPGAN v1.4 and RetinaFace ResNet-50 with random weights
(saved once under ``.run/bench-faces``), and the real realesr-animevideov3 for the background (or a
plain resize, ``none``). Random RetinaFace weights find nothing useful, so the detector runs the
real network (not its box decoding and NMS) for its cost and then answers with the known faces of the image: 1 face is a 256x256 crop
of scikit-image's astronaut around her face, 3 faces are three such crops side by side.

Stage shares come from the replica's ``timings``: ``background`` is only the wait left after the
faces were restored (the upscale runs meanwhile), and ``outside`` is the rest of the latency (HTTP,
proxy, ingress, handles, S3 upload, presign). GFPGAN crops per forward pass are not exposed by the
app; ``restore`` per request at concurrency 4 against 1 shows how much batching shared.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from stack import RUN_DIR, BenchError, post_png, progress, run_bench, services, wait_ready

if TYPE_CHECKING:
    import httpx

WORK_DIR = RUN_DIR / "bench-faces"
GFPGAN_FILE = WORK_DIR / "GFPGANv1.4-random.pth"
RETINAFACE_FILE = WORK_DIR / "retinaface-r50-random.pth"
BACKGROUND = "realesr-animevideov3"
READY_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 900.0
CROP = 256  # side of one astronaut crop
CROP_X0 = 96  # the crop's left edge in the 512x512 astronaut; its top edge is 0
STAGES = {
    "decode_s": "decode",
    "detect_s": "detect",
    "restore_s": "restore",
    "background_wait_s": "background",
    "paste_s": "paste",
    "encode_s": "encode",
}


# --- inputs -----------------------------------------------------------------------------------


def astronaut_faces(count: int) -> tuple[bytes, list[Any]]:
    """A PNG of ``count`` astronaut crops side by side, and the faces in it (input pixels)."""
    from PIL import Image as PILImage
    from skimage import data

    from models.face.types import DetectedFace

    # skimage.data.astronaut() (512x512): pupils, nose tip, mouth corners; see test_face_pipeline.
    landmarks = np.array(
        [[203.3, 101.3], [246.7, 103.4], [223.3, 127.2], [204.2, 140.5], [242.5, 142.2]],
        dtype=np.float32,
    )
    box = (178.0, 66.0, 270.0, 168.0)
    crop = data.astronaut()[:CROP, CROP_X0 : CROP_X0 + CROP]
    canvas = np.ascontiguousarray(np.concatenate([crop] * count, axis=1))
    faces = []
    for i in range(count):
        dx = i * CROP - CROP_X0
        shifted = (box[0] + dx, box[1], box[2] + dx, box[3])
        points = (landmarks + np.array([dx, 0], np.float32)).astype(np.float32)
        faces.append(DetectedFace(box=shifted, score=0.99, landmarks=points))
    buffer = io.BytesIO()
    PILImage.fromarray(canvas).save(buffer, "PNG")
    return buffer.getvalue(), faces


class KnownFacesDetector:
    """Runs the real RetinaFace (for its cost) and answers with the faces known for the image's
    width. The network loads on first use, in the replica."""

    def __init__(self, weights: Path, faces_by_width: dict[int, list[Any]]) -> None:
        self.weights = str(weights)
        self.faces_by_width = faces_by_width
        self._lock = threading.Lock()
        self._detector: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"weights": self.weights, "faces_by_width": self.faces_by_width}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(Path(state["weights"]), state["faces_by_width"])  # type: ignore[misc]

    def detect(self, image: np.ndarray) -> list[Any]:
        import torch

        with self._lock:
            if self._detector is None:
                from models.face.detect import load_retinaface

                self._detector = load_retinaface(Path(self.weights), "cpu")
        # The network alone: random weights score ~every prior as a face, and decoding plus NMS of
        # those thousands of boxes would cost seconds that real weights never spend.
        from models.face.detect import to_network_input

        x, _ = to_network_input(image, self._detector.max_side)
        with torch.inference_mode():
            self._detector.net(x.to(self._detector.device))
        return list(self.faces_by_width.get(image.shape[1], []))


def random_weights() -> tuple[str, str]:
    """GFPGAN v1.4 and RetinaFace files of the real layouts (random, seeded); reused if present.
    Returns the GFPGAN sha256 and the RetinaFace path."""
    import torch

    WORK_DIR.mkdir(parents=True, exist_ok=True)
    if not GFPGAN_FILE.exists():
        from spandrel.architectures.GFPGAN import GFPGAN

        from models.face.restore import GFPGAN_V14_CONFIG

        progress("saving random GFPGAN v1.4 weights")
        torch.manual_seed(0)
        partial = GFPGAN_FILE.with_suffix(".part")
        torch.save({"params_ema": GFPGAN(**GFPGAN_V14_CONFIG).state_dict()}, partial)
        partial.replace(GFPGAN_FILE)
    if not RETINAFACE_FILE.exists():
        from models.face.retinaface import RetinaFace

        progress("saving random RetinaFace weights")
        torch.manual_seed(0)
        partial = RETINAFACE_FILE.with_suffix(".part")
        torch.save(RetinaFace().state_dict(), partial)
        partial.replace(RETINAFACE_FILE)
    return hashlib.sha256(GFPGAN_FILE.read_bytes()).hexdigest(), str(RETINAFACE_FILE)


# --- the stack --------------------------------------------------------------------------------


@contextlib.contextmanager
def running_stack(detector: KnownFacesDetector, gfpgan_sha: str, threads: int) -> Iterator[str]:
    """Local S3 + Ray + the app; yields its URL. Everything is torn down on the way out."""
    with services("bench-faces", WORK_DIR, "run-") as base:
        from ray import serve

        from deployments.config import WeightsOverride
        from serve_app.app import APP_NAME, AppArgs, build

        args = AppArgs(
            default_model=BACKGROUND,
            models=[BACKGROUND],
            preload=[BACKGROUND],
            face_weights={"gfpgan-v1.4": WeightsOverride(path=str(GFPGAN_FILE), sha256=gfpgan_sha)},
        )
        # Ray sets OMP_NUM_THREADS, and so torch's thread count, from num_cpus.
        cpus: dict[str, Any] = {"ray_actor_options": {"num_cpus": threads}}
        options: dict[str, dict[str, Any]] = {
            "FaceRestorer": cpus,
            "Upscaler": {**cpus, "num_replicas": 1},
        }
        progress(f"deploying on {base.url}")
        serve.run(
            build(args, base.settings, options, face_detector=detector),
            name=APP_NAME,
            route_prefix="/",
        )
        wait_ready(base.url, READY_TIMEOUT_S, faces_ready)
        yield base.url
        progress("tearing down")


def faces_ready(r: httpx.Response) -> bool:
    """Ready, and so are the face models: readiness does not wait for them."""
    faces = r.json().get("checks", {}).get("face") if r.status_code == 200 else None
    # "starting" while the FaceRestorer does not answer yet; else model name -> ready.
    return isinstance(faces, dict) and bool(faces) and all(faces.values())


# --- measuring --------------------------------------------------------------------------------


@dataclass
class Cell:
    background: str
    faces: int  # per image
    concurrency: int
    latencies: list[float]
    wall_s: float
    timings: dict[str, float]  # summed over requests

    @property
    def faces_per_s(self) -> float:
        return self.faces * len(self.latencies) / self.wall_s

    @property
    def p50(self) -> float:
        return float(np.percentile(self.latencies, 50))

    def per_request(self, stage: str) -> float:
        return self.timings.get(stage, 0.0) / len(self.latencies)

    def shares(self) -> dict[str, float]:
        total = sum(self.latencies)
        shares = {label: self.timings.get(k, 0.0) / total for k, label in STAGES.items()}
        shares["outside"] = 1.0 - sum(shares.values())
        return shares


def post_face(
    client: Any, data: bytes, background: str, faces: int
) -> tuple[float, dict[str, Any]]:
    params = {"background_model": background, "format": "png"}
    latency, body = post_png(client, "/v1/face-enhance", data, params)
    if len(body.get("faces") or []) != faces:
        raise BenchError(f"expected {faces} faces, the answer has {body.get('faces')}")
    return latency, body


def run_cell(
    client: Any, data: bytes, background: str, faces: int, concurrency: int, requests: int
) -> Cell:
    """``requests`` posts from ``concurrency`` closed-loop clients."""
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        started = time.perf_counter()
        results = list(
            pool.map(lambda _: post_face(client, data, background, faces), range(requests))
        )
        wall = time.perf_counter() - started
    timings: dict[str, float] = {}
    for _, body in results:
        for name, value in body.get("timings", {}).items():
            timings[name] = timings.get(name, 0.0) + float(value)
    return Cell(background, faces, concurrency, [lat for lat, _ in results], wall, timings)


def report(cells: list[Cell]) -> None:
    print()
    print("POST /v1/face-enhance, CPU, scale 2, GFPGAN v1.4 + RetinaFace R50 (random weights)")
    stages = [*STAGES.values(), "outside"]
    head = f"{'background':<21}{'faces':>5}{'conc':>5}{'reqs':>5}{'p50 s':>8}{'faces/s':>9}"
    head += f"{'restore/req s':>14}  " + " ".join(f"{s:>12}" for s in stages)
    print(head)
    print("-" * len(head))
    for c in cells:
        shares = c.shares()
        row = f"{c.background:<21}{c.faces:>5}{c.concurrency:>5}{len(c.latencies):>5}"
        row += f"{c.p50:>8.2f}{c.faces_per_s:>9.3f}{c.per_request('restore_s'):>14.2f}  "
        row += " ".join(f"{shares[s]:>11.1%} " for s in stages)
        print(row)
    print()
    print(
        "Shares: each stage's time summed over requests / the summed latencies. 'background' is "
        "the wait after restoration (the upscale overlaps detection and restoration); 'outside' is "
        "HTTP, proxy, ingress, handles and the S3 upload."
    )
    for background in dict.fromkeys(c.background for c in cells):
        for faces in (1, 3):
            pair = {
                c.concurrency: c for c in cells if (c.background, c.faces) == (background, faces)
            }
            if 1 in pair and 4 in pair:
                one, four = pair[1], pair[4]
                print(
                    f"{background}, {faces} face(s): concurrency 4 vs 1: faces/s "
                    f"x{four.faces_per_s / one.faces_per_s:.2f}, p50 latency "
                    f"x{four.p50 / one.p50:.2f}, restore per request "
                    f"x{four.per_request('restore_s') / one.per_request('restore_s'):.2f}"
                )


@dataclass(frozen=True)
class Plan:
    backgrounds: tuple[str, ...]
    requests1: int  # at concurrency 1
    requests4: int  # at concurrency 4
    threads: int


def bench(plan: Plan) -> None:
    import httpx

    started = time.perf_counter()
    gfpgan_sha, retinaface = random_weights()
    images = {n: astronaut_faces(n) for n in (1, 3)}
    detector = KnownFacesDetector(
        Path(retinaface), {CROP * n: faces for n, (_, faces) in images.items()}
    )
    with running_stack(detector, gfpgan_sha, plan.threads) as url:
        progress(f"ready after {time.perf_counter() - started:.0f} s")
        limits = httpx.Limits(max_connections=8)
        with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
            progress("warm-up")
            for background in plan.backgrounds:
                post_face(client, images[1][0], background, 1)
            cells = []
            for background in plan.backgrounds:
                for faces in (1, 3):
                    for concurrency, requests in ((1, plan.requests1), (4, plan.requests4)):
                        progress(f"{background}: {faces} face(s), concurrency {concurrency}")
                        cell = run_cell(
                            client, images[faces][0], background, faces, concurrency, requests
                        )
                        cells.append(cell)
                        progress(
                            f"  p50 {cell.p50:.1f} s, {cell.faces_per_s:.3f} faces/s, "
                            f"latencies {', '.join(f'{v:.1f}' for v in cell.latencies)}"
                        )
    report(cells)
    mean = statistics.mean(len(c.latencies) for c in cells)
    progress(f"total {time.perf_counter() - started:.0f} s ({mean:.1f} requests per cell)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="animevideov3 only, fewer requests")
    parser.add_argument(
        "--backgrounds", help=f"comma-separated (default {BACKGROUND},none; quick {BACKGROUND})"
    )
    parser.add_argument("--requests1", type=int, help="at concurrency 1 (default 2, quick 1)")
    parser.add_argument("--requests4", type=int, help="at concurrency 4 (default 4, quick 4)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ns = parser.parse_args(argv)
    default_backgrounds = BACKGROUND if ns.quick else f"{BACKGROUND},none"
    plan = Plan(
        backgrounds=tuple((ns.backgrounds or default_backgrounds).split(",")),
        requests1=ns.requests1 or (1 if ns.quick else 2),
        requests4=ns.requests4 or 4,
        threads=ns.threads,
    )
    return run_bench("faces", bench, plan)


if __name__ == "__main__":
    sys.exit(main())
