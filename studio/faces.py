"""Face detection → a proposed crop (head and shoulders around the face).

OpenCV 5 dropped the cascade classifier from its main module and its wheels no longer ship the
trained cascades, so this module evaluates OpenCV's trained frontal-face Haar cascade (Viola–Jones,
Lienhart's 24×24 stump cascade) itself with numpy: an image pyramid, integral images, the stages
in order with early rejection, then OpenCV's rectangle grouping. The cascade file comes from
OpenCV's data: Debian's `opencv-data` package (/usr/share/opencv4/haarcascades) or an OpenCV
wheel that still bundles it (cv2.data.haarcascades).

All boxes and crops are fractions 0..1 of the upright image (shared.scene.decode_image), the same
convention as shared.scene.Crop.
"""
from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from shared.scene import Crop, decode_image

CASCADE_NAME = "haarcascade_frontalface_default.xml"
CASCADE_FOLDERS = (
    Path(cv2.data.haarcascades) if hasattr(cv2, "data") else None,
    Path("/usr/share/opencv4/haarcascades"),
    Path("/usr/share/opencv/haarcascades"),
)
INSTALL_HINT = "install OpenCV's cascades: apt-get install -y opencv-data"

# Detection parameters: OpenCV's defaults for detectMultiScale.
SCALE_FACTOR = 1.1
MIN_NEIGHBORS = 3
GROUP_EPS = 0.2
DETECT_MAX_SIDE = 640   # detect on a copy at most this large: portraits' faces are big
# Smallest face searched for, as a fraction of the image's shorter side: in a portrait the face
# is large; a group photo of up to 8 people has smaller ones. Skipping small windows saves most
# of the time (the pyramid's large levels).
PORTRAIT_MIN_FACE = 0.12
GROUP_MIN_FACE = 0.04

# Head and shoulders around a face box: the crop reaches this many face heights above the face
# top (hair) and below the face bottom (neck, shoulders), and is PORTRAIT_ASPECT wide / high.
HEADROOM = 0.6
SHOULDERS = 1.5
PORTRAIT_ASPECT = 4 / 5


class FaceDetectionUnavailable(RuntimeError):
    """The trained cascade is not on this machine; the message says how to install it."""


@dataclass(frozen=True)
class FaceBox:
    """A detected face in fractions of the image, with how many overlapping hits supported it."""
    x: float
    y: float
    w: float
    h: float
    support: int


@dataclass(frozen=True)
class _Stage:
    threshold: float
    features: np.ndarray     # [K] feature index of each stump
    thresholds: np.ndarray   # [K]
    left: np.ndarray         # [K] leaf value when feature < threshold
    right: np.ndarray        # [K]


@dataclass(frozen=True)
class _Cascade:
    width: int
    height: int
    stages: list[_Stage]
    rects: np.ndarray        # [F, 3, 4] x, y, w, h of up to three rectangles per feature
    weights: np.ndarray      # [F, 3] (0 for an unused third rectangle)


def cascade_path() -> Path:
    for folder in CASCADE_FOLDERS:
        if folder is not None and (folder / CASCADE_NAME).is_file():
            return folder / CASCADE_NAME
    raise FaceDetectionUnavailable(f"face detection needs {CASCADE_NAME}: {INSTALL_HINT}")


@lru_cache(maxsize=1)
def _load_cascade(path: Path) -> _Cascade:
    root = ElementTree.parse(path).getroot().find("cascade")
    if root is None or root.findtext("featureType", "").strip() != "HAAR":
        raise FaceDetectionUnavailable(f"{path} is not an OpenCV Haar cascade: {INSTALL_HINT}")
    stages = []
    for stage in root.find("stages"):
        nodes = [[float(v) for v in weak.findtext("internalNodes").split()]
                 for weak in stage.find("weakClassifiers")]
        leaves = [[float(v) for v in weak.findtext("leafValues").split()]
                  for weak in stage.find("weakClassifiers")]
        # Stumps only: "left right feature threshold" with left = 0, right = -1 (two leaves).
        stages.append(_Stage(
            threshold=float(stage.findtext("stageThreshold")),
            features=np.array([int(n[2]) for n in nodes]),
            thresholds=np.array([n[3] for n in nodes]),
            left=np.array([leaf[0] for leaf in leaves]),
            right=np.array([leaf[1] for leaf in leaves]),
        ))
    features = list(root.find("features"))
    rects = np.zeros((len(features), 3, 4), dtype=np.int64)
    weights = np.zeros((len(features), 3))
    for f, feature in enumerate(features):
        if feature.findtext("tilted", "0").strip() == "1":
            raise FaceDetectionUnavailable(f"{path} uses tilted features, which are not "
                                           f"supported; use {CASCADE_NAME}")
        for r, rect in enumerate(feature.find("rects")):
            x, y, w, h, weight = (float(v) for v in rect.text.split())
            rects[f, r] = (int(x), int(y), int(w), int(h))
            weights[f, r] = weight
    return _Cascade(int(root.findtext("width")), int(root.findtext("height")), stages, rects,
                    weights)


def detect_faces(image_bytes: bytes, min_face: float = GROUP_MIN_FACE) -> list[FaceBox]:
    """Frontal faces at least `min_face` × the shorter side in an encoded image, largest first.
    Raises FaceDetectionUnavailable when the cascade is missing and shared.scene.ProjectError
    when the image cannot be read."""
    cascade = _load_cascade(cascade_path())
    image = decode_image(image_bytes)
    gray = np.asarray(image.convert("L"), dtype=np.uint8)
    height, width = gray.shape
    shrink = min(1.0, DETECT_MAX_SIDE / max(width, height))
    if shrink < 1.0:
        gray = cv2.resize(gray, (round(width * shrink), round(height * shrink)),
                          interpolation=cv2.INTER_AREA)
    hits = _detect_pixels(gray, cascade, min_window=min_face * min(gray.shape))
    faces = [FaceBox(x / gray.shape[1], y / gray.shape[0], w / gray.shape[1], h / gray.shape[0], n)
             for x, y, w, h, n in _group(hits)]
    return sorted(faces, key=lambda f: f.w * f.h, reverse=True)


def _detect_pixels(gray: np.ndarray, cascade: _Cascade,
                   min_window: float = 0.0) -> list[tuple[int, int, int, int]]:
    """Raw window hits (x, y, w, h) in pixels of `gray`, over the pyramid levels whose window
    is at least `min_window` pixels wide (OpenCV's scale sequence: 1, 1.1, 1.21, …)."""
    hits = []
    factor = 1.0
    while True:
        scaled_size = (round(gray.shape[1] / factor), round(gray.shape[0] / factor))
        if scaled_size[0] < cascade.width or scaled_size[1] < cascade.height:
            break
        if cascade.width * factor < min_window:
            factor *= SCALE_FACTOR
            continue
        scaled = gray if factor == 1.0 else cv2.resize(gray, scaled_size,
                                                      interpolation=cv2.INTER_LINEAR)
        step = 1 if factor > 2.0 else 2  # OpenCV's stride: finer once windows are large
        window = (round(cascade.width * factor), round(cascade.height * factor))
        for x, y in _windows_passing(scaled, cascade, step):
            hits.append((round(x * factor), round(y * factor), *window))
        factor *= SCALE_FACTOR
    return hits


def _windows_passing(image: np.ndarray, cascade: _Cascade, step: int) -> list[tuple[int, int]]:
    """Top-left corners of the windows that pass every stage at this pyramid level."""
    integral, squares = cv2.integral2(image, sdepth=cv2.CV_64F)  # [H+1, W+1] each
    stride = integral.shape[1]
    ys, xs = np.mgrid[0:image.shape[0] - cascade.height + 1:step,
                      0:image.shape[1] - cascade.width + 1:step]
    xs, ys = xs.ravel(), ys.ravel()
    base = ys * stride + xs  # [N] offset of each window's top-left corner in the integral

    def box_sum(table: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray:
        flat = table.ravel()
        return (flat[base + (y + h) * stride + x + w] - flat[base + y * stride + x + w]
                - flat[base + (y + h) * stride + x] + flat[base + y * stride + x])

    # Lighting normalisation over the window less a 1-pixel border, as OpenCV computes it;
    # flat windows (standard deviation ≤ 10 grey levels) cannot hold a face and are dropped.
    inner = (1, 1, cascade.width - 2, cascade.height - 2)
    area = inner[2] * inner[3]
    total = box_sum(integral, *inner)
    spread = area * box_sum(squares, *inner) - total * total
    norm = np.sqrt(np.maximum(spread, 0.0))
    keep = norm > 10.0 * area
    base, norm, xs, ys = base[keep], norm[keep], xs[keep], ys[keep]

    # Corner offsets of every rectangle of every feature relative to a window's corner. Sums
    # are gathered as int32 (exact below 2^31: images here have at most DETECT_MAX_SIDE² pixels).
    table = integral.astype(np.int32).ravel()
    rx, ry, rw, rh = (cascade.rects[..., i] for i in range(4))
    corners = np.stack([(ry + rh) * stride + rx + rw, ry * stride + rx + rw,
                        (ry + rh) * stride + rx, ry * stride + rx], axis=-1)  # [F, 3, 4]
    for stage in cascade.stages:
        if base.size == 0:
            break
        stage_corners = corners[stage.features].reshape(-1)  # [K*3*4]
        values = np.take(table, base[:, None] + stage_corners[None, :]).reshape(len(base), -1, 4)
        sums = (values[..., 0] - values[..., 1] - values[..., 2] + values[..., 3]).astype(
            np.float32)  # [N, K*3] rectangle sums
        weights = cascade.weights[stage.features].reshape(-1).astype(np.float32)
        feature = (sums * weights).reshape(len(base), -1, 3).sum(-1)  # [N, K]
        passed = feature < stage.thresholds[None, :] * norm[:, None]
        score = np.where(passed, stage.left, stage.right).sum(axis=1)
        keep = score >= stage.threshold
        base, norm, xs, ys = base[keep], norm[keep], xs[keep], ys[keep]
    return list(zip(xs.tolist(), ys.tolist()))


def _group(hits: list[tuple[int, int, int, int]]) -> list[tuple[float, float, float, float, int]]:
    """OpenCV's groupRectangles: cluster similar hits, average each cluster, keep clusters of
    more than MIN_NEIGHBORS hits, and drop a cluster lying inside a better-supported one."""
    labels = list(range(len(hits)))

    def find(i: int) -> int:
        while labels[i] != i:
            labels[i] = labels[labels[i]]
            i = labels[i]
        return i

    for i, a in enumerate(hits):
        for j in range(i):
            b = hits[j]
            delta = GROUP_EPS * (min(a[2], b[2]) + min(a[3], b[3])) / 2
            if (abs(a[0] - b[0]) <= delta and abs(a[1] - b[1]) <= delta
                    and abs(a[0] + a[2] - b[0] - b[2]) <= delta
                    and abs(a[1] + a[3] - b[1] - b[3]) <= delta):
                labels[find(i)] = find(j)
    clusters: dict[int, list[tuple[int, int, int, int]]] = {}
    for i, hit in enumerate(hits):
        clusters.setdefault(find(i), []).append(hit)
    averaged = [(*np.mean(members, axis=0).tolist(), len(members))
                for members in clusters.values() if len(members) > MIN_NEIGHBORS]
    kept = []
    for a in averaged:
        inside_better = False
        for b in averaged:
            if b is a:
                continue
            dx, dy = b[2] * GROUP_EPS, b[3] * GROUP_EPS
            if (a[0] >= b[0] - dx and a[1] >= b[1] - dy and a[0] + a[2] <= b[0] + b[2] + dx
                    and a[1] + a[3] <= b[1] + b[3] + dy and b[4] > max(3, a[4])):
                inside_better = True
                break
        if not inside_better:
            kept.append(a)
    return kept


# ----------------------------------------------------------------------------- crop proposals


def head_and_shoulders(face: FaceBox, image_size: tuple[int, int]) -> Crop:
    """A PORTRAIT_ASPECT crop from a little above the hair to below the shoulders, centred on
    the face, moved (then shrunk) to stay inside the image."""
    width, height = image_size
    face_h = face.h * height
    crop_h = face_h * (1 + HEADROOM + SHOULDERS)
    crop_w = crop_h * PORTRAIT_ASPECT
    top = face.y * height - HEADROOM * face_h
    left = (face.x + face.w / 2) * width - crop_w / 2
    return _fit((left, top, crop_w, crop_h), width, height)


def centred_portrait(image_size: tuple[int, int]) -> Crop:
    """The proposal when no face is found: the largest PORTRAIT_ASPECT box, centred
    horizontally and at the top (where heads usually are)."""
    width, height = image_size
    crop_w = min(width, height * PORTRAIT_ASPECT)
    crop_h = crop_w / PORTRAIT_ASPECT
    return _fit(((width - crop_w) / 2, 0.0, crop_w, crop_h), width, height)


def group_strips(people: int) -> list[Crop]:
    """The proposal for a group photo without detected faces: equal vertical strips, left to
    right, with the official 5% margins."""
    margin = 0.05
    return [Crop(x=(i + margin) / people, y=margin, w=(1 - 2 * margin) / people, h=1 - 2 * margin)
            for i in range(people)]


def _fit(box: tuple[float, float, float, float], width: int, height: int) -> Crop:
    left, top, crop_w, crop_h = box
    scale = min(1.0, width / crop_w, height / crop_h)  # shrink about the centre if too big
    cx, cy = left + crop_w / 2, top + crop_h / 2
    crop_w, crop_h = crop_w * scale, crop_h * scale
    left = min(max(cx - crop_w / 2, 0.0), width - crop_w)
    top = min(max(cy - crop_h / 2 if scale < 1.0 else top, 0.0), height - crop_h)
    # Four decimals, as a crop slider shows them, never reaching past an edge.
    x, y = round(left / width, 4), round(top / height, 4)
    return Crop(x=x, y=y, w=min(round(crop_w / width, 4), 1.0 - x),
                h=min(round(crop_h / height, 4), 1.0 - y))


@dataclass(frozen=True)
class CropProposal:
    crop: Crop
    face: FaceBox | None
    note: str          # for the person: what was found, or why the crop is a guess


def propose_portrait_crop(image_bytes: bytes) -> CropProposal:
    """Head and shoulders around the largest face, or a centred guess saying why."""
    size = decode_image(image_bytes).size
    try:
        faces = detect_faces(image_bytes, PORTRAIT_MIN_FACE)
    except FaceDetectionUnavailable as e:
        return CropProposal(centred_portrait(size), None, f"No face detection ({e}); "
                            "the crop is a centred guess — adjust it below.")
    if not faces:
        return CropProposal(centred_portrait(size), None,
                            "No face found; the crop is a centred guess — adjust it below.")
    face = faces[0]
    found = f"{len(faces)} faces found, cropped to the largest" if len(faces) > 1 else "Face found"
    return CropProposal(head_and_shoulders(face, size), face, f"{found}: head and shoulders.")


def propose_group_boxes(image_bytes: bytes, people: int) -> tuple[list[Crop], str]:
    """One box per person in a group photo, left to right: head and shoulders around the
    `people` largest faces, or equal strips when fewer faces are found."""
    size = decode_image(image_bytes).size
    try:
        faces = detect_faces(image_bytes)
    except FaceDetectionUnavailable as e:
        return group_strips(people), f"No face detection ({e}); boxes are equal strips."
    if len(faces) < people:
        return group_strips(people), (f"{len(faces)} of {people} faces found; boxes are equal "
                                      "strips — adjust them below.")
    chosen = sorted(faces[:people], key=lambda f: f.x)
    return [head_and_shoulders(f, size) for f in chosen], f"{people} faces found, left to right."
