"""The face pipeline end to end on a real photo: detect (stub) -> align -> restore (stub) -> paste."""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import skimage.data

from models.errors import ImageError, InvalidOptionError
from models.face.align import BORDER_RGB, FACE_TEMPLATE_512, estimate_affine
from models.face.pipeline import (
    FaceJob,
    paste_faces,
    prepare_faces,
    resize_background,
    restore_faces,
)
from models.face.types import DetectedFace

# skimage.data.astronaut() (512x512): pupils, nose tip, mouth corners, read off a 12x zoom.
ASTRONAUT_LANDMARKS = np.array(
    [[203.3, 101.3], [246.7, 103.4], [223.3, 127.2], [204.2, 140.5], [242.5, 142.2]],
    dtype=np.float32,
)
ASTRONAUT_BOX = (178.0, 66.0, 270.0, 168.0)
NOSE = (223, 127)
FAR_AWAY = (slice(400, 512), slice(0, 100))  # bottom-left corner, well outside the face


class StubDetector:
    """Returns fixed faces and records the images it was shown."""

    def __init__(self, faces: list[DetectedFace]) -> None:
        self.faces = faces
        self.seen: list[np.ndarray] = []

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        self.seen.append(image)
        return list(self.faces)


def astronaut_face(shift: tuple[float, float] = (0.0, 0.0), zoom: float = 1.0) -> DetectedFace:
    center = ASTRONAUT_LANDMARKS.mean(axis=0)
    points = (ASTRONAUT_LANDMARKS - center) * zoom + center + np.array(shift, np.float32)
    x1, y1, x2, y2 = ASTRONAUT_BOX
    cx, cy = center
    box = (
        (x1 - cx) * zoom + cx + shift[0],
        (y1 - cy) * zoom + cy + shift[1],
        (x2 - cx) * zoom + cx + shift[0],
        (y2 - cy) * zoom + cy + shift[1],
    )
    return DetectedFace(box=box, score=0.99, landmarks=points.astype(np.float32))


def brighten(crops: np.ndarray) -> np.ndarray:
    return crops * 0.5 + 0.5


def identity(crops: np.ndarray) -> np.ndarray:
    return crops.copy()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut().astype(np.float32) / 255


def test_landmarks_align_onto_the_template(astronaut: np.ndarray) -> None:
    affine = estimate_affine(ASTRONAUT_LANDMARKS)
    assert affine is not None
    mapped = ASTRONAUT_LANDMARKS @ affine[:, :2].T + affine[:, 2]
    # A similarity fit of a real face: every point within 8 px of the template (measured 6.7).
    assert np.abs(mapped - FACE_TEMPLATE_512).max() < 8.0
    assert 2.9 < np.sqrt(abs(np.linalg.det(affine[:, :2]))) < 3.3  # measured 3.11


def test_prepare_faces_crops_the_aligned_face(astronaut: np.ndarray) -> None:
    job = prepare_faces(astronaut, StubDetector([astronaut_face()]))
    assert job.crops.shape == (1, 3, 512, 512)
    assert job.crops.dtype == np.float32
    assert job.affines.shape == (1, 2, 3)
    assert (job.height, job.width) == (512, 512)
    # Where the affine sends the photo's nose tip, the crop shows the nose tip.
    x, y = job.affines[0] @ np.array([NOSE[0], NOSE[1], 1.0])
    assert abs(x - 256.6) < 8 and abs(y - 314.0) < 8  # the template's nose
    np.testing.assert_allclose(
        job.crops[0][:, round(y), round(x)], astronaut[NOSE[1], NOSE[0]], atol=0.03
    )


def test_face_region_changes_and_the_rest_is_background(astronaut: np.ndarray) -> None:
    background = resize_background(astronaut, 2)
    result = restore_faces(astronaut, StubDetector([astronaut_face()]), brighten, background)

    assert result.color.shape == (1024, 1024, 3)
    assert result.color.dtype == np.float32
    changed = (result.color != background).any(axis=2)
    ys, xs = np.nonzero(changed)
    assert changed.sum() > 80_000  # measured 106_833: face and hair, ~340 px across at x2
    # Every changed pixel lies in the face's neighbourhood; the rest is the background exactly.
    assert xs.min() > 260 and xs.max() < 650
    assert ys.min() > 30 and ys.max() < 420
    assert np.array_equal(result.color[~changed], background[~changed])
    # At the nose the mask is fully on: the output is the brightened face.
    nx, ny = 2 * NOSE[0] + 1, 2 * NOSE[1] + 1
    np.testing.assert_allclose(result.color[ny, nx], background[ny, nx] * 0.5 + 0.5, atol=0.05)
    np.testing.assert_allclose(result.faces[0].box, np.array(ASTRONAUT_BOX) * 2)
    np.testing.assert_allclose(result.faces[0].landmarks, ASTRONAUT_LANDMARKS * 2, rtol=1e-6)


@pytest.mark.parametrize(("scale", "max_error"), [(1, 1.2), (2, 2.0), (4, 1.8)])
def test_identity_restore_pastes_the_face_back_in_place(
    astronaut: np.ndarray, scale: int, max_error: float
) -> None:
    """Align + inverse warp must land on the same pixels (mean error in /255 units).

    Measured: 0.88 at x1, 1.56 at x2, 1.52 at x4; with facexlib's half-pixel-off offset 2.94 at x2
    and 1.99 at x4.
    """
    background = resize_background(astronaut, scale)
    out = restore_faces(astronaut, StubDetector([astronaut_face()]), identity, background).color
    changed = np.abs(out - background).max(axis=2) > 0
    error = np.abs(out - background)[changed].mean() * 255
    assert changed.sum() > 10_000 * scale * scale
    assert error < max_error


def test_no_face_gives_the_background(astronaut: np.ndarray) -> None:
    background = resize_background(astronaut, 2)
    calls: list[np.ndarray] = []

    def never(crops: np.ndarray) -> np.ndarray:
        calls.append(crops)
        return crops

    result = restore_faces(astronaut, StubDetector([]), never, background)
    assert result.faces == ()
    assert np.array_equal(result.color, background)
    assert calls == []


def test_grayscale_input_stays_grayscale(astronaut: np.ndarray) -> None:
    gray = (astronaut @ np.array([0.299, 0.587, 0.114], np.float32))[:, :, None]
    detector = StubDetector([astronaut_face()])
    result = restore_faces(gray, detector, brighten, scale=2)
    seen = detector.seen[0]
    assert seen.shape == (512, 512, 3)
    assert np.array_equal(seen[:, :, 0], seen[:, :, 2])
    assert result.color.shape == (1024, 1024, 1)
    background = resize_background(gray, 2)
    nx, ny = 2 * NOSE[0] + 1, 2 * NOSE[1] + 1
    np.testing.assert_allclose(result.color[ny, nx], background[ny, nx] * 0.5 + 0.5, atol=0.05)
    assert np.array_equal(result.color[FAR_AWAY], background[FAR_AWAY])


def test_sixteen_bit_values_survive(astronaut: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    deep = (astronaut * 65535).astype(np.uint16) + rng.integers(0, 200, astronaut.shape, np.uint16)
    color = deep.astype(np.float32) / 65535
    result = restore_faces(color, StubDetector([astronaut_face()]), brighten)
    assert result.color.dtype == np.float32
    assert np.array_equal(result.color[FAR_AWAY], color[FAR_AWAY])
    face = result.color[NOSE[1] - 20 : NOSE[1] + 20, NOSE[0] - 20 : NOSE[0] + 20]
    off_8bit_grid = np.abs(face * 255 - np.round(face * 255)) > 0.01
    assert off_8bit_grid.mean() > 0.9  # no 8-bit quantisation on the way
    assert not np.allclose(result.color[NOSE[1], NOSE[0]], color[NOSE[1], NOSE[0]], atol=0.05)


def test_weight_blends_restored_and_background(astronaut: np.ndarray) -> None:
    detector = StubDetector([astronaut_face()])
    full = restore_faces(astronaut, detector, brighten, weight=1.0).color
    half = restore_faces(astronaut, detector, brighten, weight=0.5).color
    none = restore_faces(astronaut, detector, brighten, weight=0.0).color
    assert np.array_equal(none, astronaut)
    np.testing.assert_allclose(half - astronaut, (full - astronaut) / 2, atol=1e-5)
    with pytest.raises(InvalidOptionError):
        restore_faces(astronaut, detector, brighten, weight=1.5)


def test_face_selection(astronaut: np.ndarray) -> None:
    small_left = astronaut_face(shift=(-150, 200), zoom=0.6)
    big_center = astronaut_face(shift=(30, 150), zoom=1.2)
    middle = astronaut_face()
    tiny_eyes = astronaut_face(shift=(200, 300), zoom=0.05)  # eyes ~2 px apart: skipped
    detector = StubDetector([middle, small_left, big_center, tiny_eyes])

    all_faces = prepare_faces(astronaut, detector)
    assert all_faces.faces == (big_center, middle, small_left)
    assert len(all_faces.crops) == 3
    two = prepare_faces(astronaut, detector, max_faces=2)
    assert two.faces == (big_center, middle)
    center = prepare_faces(astronaut, detector, only_center_face=True)
    assert center.faces == (big_center,)  # box centre (254, 266) is nearest (256, 256)


def test_face_at_the_border(astronaut: np.ndarray) -> None:
    edge = astronaut_face(shift=(-200, -60))  # eyes at x ~ 3..47: the crop reaches outside
    job = prepare_faces(astronaut, StubDetector([edge]))
    np.testing.assert_allclose(job.crops[0][:, 256, 0], BORDER_RGB, atol=1e-6)
    out = paste_faces(astronaut, job, brighten(job.crops))
    assert out.shape == astronaut.shape
    nose = (67, 23)  # the shifted nose tip, 23 px from the left edge
    assert out[nose].mean() > astronaut[nose].mean() + 0.2


def test_invalid_inputs(astronaut: np.ndarray) -> None:
    detector = StubDetector([astronaut_face()])
    with pytest.raises(ImageError):
        prepare_faces(astronaut[:, :, :2], detector)
    with pytest.raises(ImageError):
        prepare_faces((astronaut * 255).astype(np.uint8), detector)
    with pytest.raises(InvalidOptionError):
        prepare_faces(astronaut, detector, max_faces=0)
    job = prepare_faces(astronaut, detector)
    with pytest.raises(InvalidOptionError):
        paste_faces(astronaut, job, [])
    with pytest.raises(InvalidOptionError):
        paste_faces(astronaut, job, [np.zeros((3, 256, 256), np.float32)])


class PairBatcher:
    """A batched restore shared by two concurrent requests: one model call for both."""

    def __init__(self) -> None:
        self.barrier = threading.Barrier(2, timeout=30)
        self.lock = threading.Lock()
        self.inputs: list[np.ndarray] = []
        self.outputs: list[np.ndarray] | None = None
        self.batches: list[int] = []

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        with self.lock:
            slot = len(self.inputs)
            self.inputs.append(crops)
        self.barrier.wait()
        with self.lock:
            if self.outputs is None:
                batch = np.concatenate(self.inputs)
                self.batches.append(len(batch))
                restored = brighten(batch)
                bounds = np.cumsum([0] + [len(c) for c in self.inputs])
                self.outputs = [restored[a:b] for a, b in itertools.pairwise(bounds)]
            return self.outputs[slot]


def test_concurrent_jobs_keep_their_own_faces(astronaut: np.ndarray) -> None:
    other = np.ascontiguousarray(astronaut[:, :, ::-1])  # same face, red and blue swapped
    images = [astronaut, other]
    detector = StubDetector([astronaut_face()])
    expected = [restore_faces(img, detector, brighten, scale=2).color for img in images]
    assert not np.allclose(expected[0], expected[1], atol=0.1)

    batcher = PairBatcher()
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(restore_faces, img, detector, batcher, scale=2) for img in images]
        results = [f.result(timeout=60).color for f in futures]

    assert batcher.batches == [2]
    assert np.array_equal(results[0], expected[0])
    assert np.array_equal(results[1], expected[1])


def test_stages_interleave_through_one_restore_call(astronaut: np.ndarray) -> None:
    other = np.ascontiguousarray(astronaut[:, :, ::-1])
    detector = StubDetector([astronaut_face(), astronaut_face(shift=(150, 250), zoom=0.7)])
    jobs: list[FaceJob] = [prepare_faces(img, detector) for img in (astronaut, other)]
    restored = brighten(np.concatenate([job.crops for job in jobs]))  # one batch of 4
    outs = [
        paste_faces(astronaut, jobs[0], restored[:2]),
        paste_faces(other, jobs[1], restored[2:]),
    ]
    for img, job, out in zip((astronaut, other), jobs, outs, strict=True):
        alone = paste_faces(img, job, brighten(job.crops))
        assert np.array_equal(out, alone)
    assert len(restored) == 4
