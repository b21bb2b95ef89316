"""RetinaFace: checkpoint layout, priors, decoding, NMS, input preparation and the detector."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from models.errors import ImageError, UnsupportedModelError
from models.face.detect import RetinaFaceDetector, load_retinaface, to_network_input
from models.face.priors import decode_boxes, decode_landmarks, prior_boxes, select_faces
from models.face.retinaface import RetinaFace

# Measured once from facexlib 0.3.0's RetinaFace("resnet50").state_dict() (throwaway environment):
# sha256 of "\n".join(f"{key}:{tuple(shape)}") in state-dict order.
FACEXLIB_LAYOUT_SHA = "9f57bdcaba06c7e54e98152287977efcadf2f253376077d0afab286cbd0ef6de"
FACEXLIB_KEYS = 456
FACEXLIB_NUMEL = 27_351_657
FACEXLIB_SHAPES = {
    "body.conv1.weight": (64, 3, 7, 7),
    "body.layer4.2.conv3.weight": (2048, 512, 1, 1),
    "fpn.output1.0.weight": (256, 512, 1, 1),
    "fpn.output3.0.weight": (256, 2048, 1, 1),
    "fpn.merge1.0.weight": (256, 256, 3, 3),
    "ssh1.conv3X3.0.weight": (128, 256, 3, 3),
    "ssh1.conv5X5_1.0.weight": (64, 256, 3, 3),
    "ssh3.conv7x7_3.1.running_var": (64,),
    "ClassHead.0.conv1x1.weight": (4, 256, 1, 1),
    "BboxHead.2.conv1x1.weight": (8, 256, 1, 1),
    "LandmarkHead.1.conv1x1.bias": (20,),
}


@pytest.fixture(scope="module")
def net() -> RetinaFace:
    torch.manual_seed(0)
    return RetinaFace().eval()


@pytest.fixture(scope="module")
def checkpoint(net: RetinaFace, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights saved like the published file, with DataParallel's ``module.`` prefix."""
    path = tmp_path_factory.mktemp("retinaface") / "detection_Resnet50_Final.pth"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)
    return path


def test_state_dict_layout_equals_facexlib(net: RetinaFace) -> None:
    state = net.state_dict()
    layout = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in state.items())
    assert len(state) == FACEXLIB_KEYS
    assert sum(v.numel() for v in state.values()) == FACEXLIB_NUMEL
    for key, shape in FACEXLIB_SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    assert hashlib.sha256(layout.encode()).hexdigest() == FACEXLIB_LAYOUT_SHA


def test_load_retinaface_strict_and_prefix_stripped(net: RetinaFace, checkpoint: Path) -> None:
    detector = load_retinaface(checkpoint, "cpu")
    loaded = detector.net.state_dict()
    for key in (
        "body.conv1.weight",
        "ssh2.conv5X5_2.1.running_mean",
        "LandmarkHead.2.conv1x1.bias",
    ):
        assert torch.equal(loaded[key], net.state_dict()[key])
    assert not detector.net.training


def test_load_retinaface_without_batchnorm_counters(net: RetinaFace, tmp_path: Path) -> None:
    path = tmp_path / "old.pth"
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, path)
    detector = load_retinaface(path, "cpu")
    assert torch.equal(
        detector.net.state_dict()["fpn.output2.0.weight"], state["fpn.output2.0.weight"]
    )


def test_load_retinaface_rejects_other_layouts(net: RetinaFace, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pth"
    torch.save({k: v for k, v in net.state_dict().items() if "ClassHead" not in k}, missing)
    with pytest.raises(UnsupportedModelError, match="ClassHead"):
        load_retinaface(missing, "cpu")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UnsupportedModelError):
        load_retinaface(garbage, "cpu")


def _reference_priors(height: int, width: int) -> list[list[float]]:
    """facexlib's PriorBox loop, written out."""
    anchors = []
    for step, sizes in zip((8, 16, 32), ((16, 32), (64, 128), (256, 512)), strict=True):
        for i in range(math.ceil(height / step)):
            for j in range(math.ceil(width / step)):
                for size in sizes:
                    cx, cy = (j + 0.5) * step / width, (i + 0.5) * step / height
                    anchors.append([cx, cy, size / width, size / height])
    return anchors


@pytest.mark.parametrize(("height", "width"), [(64, 64), (70, 90), (33, 100)])
def test_prior_boxes_match_reference_loop(height: int, width: int) -> None:
    priors = prior_boxes(height, width)
    expected = torch.tensor(_reference_priors(height, width))
    assert priors.shape == expected.shape
    torch.testing.assert_close(priors, expected)


def test_prior_boxes_known_values() -> None:
    priors = prior_boxes(64, 64)
    assert priors.shape == ((8 * 8 + 4 * 4 + 2 * 2) * 2, 4)
    torch.testing.assert_close(priors[0], torch.tensor([4 / 64, 4 / 64, 16 / 64, 16 / 64]))
    torch.testing.assert_close(priors[57], torch.tensor([36 / 64, 28 / 64, 32 / 64, 32 / 64]))
    torch.testing.assert_close(priors[128], torch.tensor([8 / 64, 8 / 64, 1.0, 1.0]))
    torch.testing.assert_close(priors[129], torch.tensor([8 / 64, 8 / 64, 2.0, 2.0]))
    torch.testing.assert_close(priors[-1], torch.tensor([48 / 64, 48 / 64, 8.0, 8.0]))


def test_decode_known_offsets() -> None:
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    loc = torch.tensor([[1.0, 2.0, 0.0, math.log(2) / 0.2]])
    torch.testing.assert_close(decode_boxes(loc, priors), torch.tensor([[0.42, 0.18, 0.62, 0.98]]))
    landm = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0, -1.0, 5.0, 5.0, -5.0, 2.5]])
    expected = torch.tensor([[[0.5, 0.5], [0.52, 0.5], [0.5, 0.46], [0.6, 0.7], [0.4, 0.6]]])
    torch.testing.assert_close(decode_landmarks(landm, priors), expected)


def _hand_built_outputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Outputs for a 64x64 input: A (kept), B (overlaps A, lower score), C (kept), D (too low)."""
    count = prior_boxes(64, 64).shape[0]
    loc, landm = torch.zeros(count, 4), torch.zeros(count, 10)
    face = torch.zeros(count)
    face[57] = 0.99  # A: prior centre (36, 28), size 32
    loc[57] = torch.tensor([0.5, -0.5, math.log(1.5) / 0.2, 0.0])
    landm[57] = torch.tensor([0.0, 0.0, 1.0, -1.0, 2.0, -2.0, 3.0, -3.0, 4.0, -4.0])
    face[55] = 0.98  # B: box (12, 12, 44, 44), IoU with A 0.56
    face[128] = 0.975  # C: box (-24, -24, 40, 40), IoU with A 0.16
    face[3] = 0.5  # D
    scores = torch.stack([1 - face, face], dim=1)
    return loc, scores, landm


@pytest.mark.parametrize("rescale", [1.0, 2.5])
def test_select_faces_threshold_nms_and_image_coordinates(rescale: float) -> None:
    loc, scores, landm = _hand_built_outputs()
    faces = select_faces(
        loc,
        scores,
        landm,
        height=64,
        width=64,
        score_threshold=0.97,
        nms_threshold=0.4,
        rescale=rescale,
    )
    assert [round(f.score, 3) for f in faces] == [0.99, 0.975]
    np.testing.assert_allclose(
        faces[0].box, np.array([13.6, 10.4, 61.6, 42.4]) * rescale, rtol=1e-5
    )
    np.testing.assert_allclose(faces[1].box, np.array([-24, -24, 40, 40]) * rescale, rtol=1e-5)
    k = np.arange(5, dtype=np.float32)
    expected = np.stack([36 + 3.2 * k, 28 - 3.2 * k], axis=1) * rescale
    np.testing.assert_allclose(faces[0].landmarks, expected, rtol=1e-5)
    assert faces[0].landmarks.shape == (5, 2)
    assert faces[0].landmarks.dtype == np.float32
    np.testing.assert_allclose(faces[1].landmarks, np.full((5, 2), 8.0 * rescale), rtol=1e-5)


def test_select_faces_nothing_above_threshold() -> None:
    loc, scores, landm = _hand_built_outputs()
    faces = select_faces(
        loc, scores, landm, height=64, width=64, score_threshold=0.995, nms_threshold=0.4
    )
    assert faces == []


def test_network_input_is_bgr_minus_mean() -> None:
    rgb8 = np.zeros((2, 3, 3), np.uint8)
    rgb8[1, 2] = (10, 20, 30)
    x, factor = to_network_input(rgb8, None)
    assert factor == 1.0
    assert x.shape == (1, 3, 2, 3)
    assert x.dtype == torch.float32
    assert x[0, :, 1, 2].tolist() == [30 - 104, 20 - 117, 10 - 123]
    assert x[0, :, 0, 0].tolist() == [-104, -117, -123]
    x_float, _ = to_network_input(rgb8.astype(np.float32) / 255, None)
    torch.testing.assert_close(x_float, x)
    x_16, _ = to_network_input(rgb8.astype(np.uint16) * 257, None)
    torch.testing.assert_close(x_16, x)


def test_network_input_shrinks_large_images() -> None:
    x, factor = to_network_input(np.zeros((100, 50, 3), np.uint8), 40)
    assert x.shape == (1, 3, 40, 20)
    assert factor == pytest.approx(0.4)
    with pytest.raises(ImageError):
        to_network_input(np.zeros((10, 10), np.uint8), None)


def test_network_outputs_cover_all_priors(net: RetinaFace) -> None:
    torch.manual_seed(1)
    x = torch.randn(1, 3, 70, 90) * 50
    with torch.inference_mode():
        loc, scores, landm = net(x)
    priors = prior_boxes(70, 90).shape[0]
    assert priors == 294
    assert loc.shape == (1, priors, 4)
    assert scores.shape == (1, priors, 2)
    assert landm.shape == (1, priors, 10)
    torch.testing.assert_close(scores.sum(-1), torch.ones(1, priors))


def test_detector_runs_on_an_image(checkpoint: Path) -> None:
    detector = load_retinaface(checkpoint, "cpu", score_threshold=0.0)
    image = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    faces = detector.detect(image)
    assert 0 < len(faces) <= 294
    scores = [f.score for f in faces]
    assert scores == sorted(scores, reverse=True)
    assert all(f.landmarks.shape == (5, 2) and len(f.box) == 4 for f in faces)


class _OnePriorNet(torch.nn.Module):
    """Scores one chosen prior as a face with zero offsets, whatever the input size."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.seen.append(tuple(x.shape))
        count = prior_boxes(x.shape[2], x.shape[3]).shape[0]
        face = torch.zeros(1, count)
        face[0, self.index] = 1.0
        scores = torch.stack([1 - face, face], dim=-1)
        return torch.zeros(1, count, 4), scores, torch.zeros(1, count, 10)


def test_detector_maps_resized_detections_back() -> None:
    net = _OnePriorNet(index=0)  # prior centre (4, 4), size 16 in network pixels
    detector = RetinaFaceDetector(net, torch.device("cpu"), max_side=100)
    faces = detector.detect(np.zeros((200, 120, 3), np.float32))
    assert net.seen == [(1, 3, 100, 60)]
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].box, (-8, -8, 24, 24), rtol=1e-5)
    np.testing.assert_allclose(faces[0].landmarks, np.full((5, 2), 8.0), rtol=1e-5)
