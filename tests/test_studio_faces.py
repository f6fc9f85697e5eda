"""Face detection → proposed crops (studio.faces), on faces drawn in code.

The drawn faces (skin-coloured oval, dark brows and pupils, a mouth, shoulders) are what OpenCV's
own CascadeClassifier finds with haarcascade_frontalface_default.xml; studio.faces evaluates the
same cascade, so it must find them where they were drawn. The module also serves portraits to
the other studio tests (draw_portrait, draw_group_photo)."""
from __future__ import annotations

import io
import random
from dataclasses import dataclass

import pytest
from PIL import Image, ImageDraw, ImageFilter

from shared.scene import Crop
from studio import faces

needs_cascade = pytest.mark.skipif(
    not any(folder is not None and (folder / faces.CASCADE_NAME).is_file()
            for folder in faces.CASCADE_FOLDERS),
    reason=f"{faces.CASCADE_NAME} is not installed ({faces.INSTALL_HINT})")


@dataclass(frozen=True)
class DrawnFace:
    cx: float   # centre and size of the face oval, in pixels
    cy: float
    width: float
    height: float


def draw_face(image: Image.Image, face: DrawnFace, seed: int = 0) -> None:
    rng = random.Random(seed)
    pen = ImageDraw.Draw(image)
    cx, cy, fw, fh = face.cx, face.cy, face.width, face.height
    skin = (rng.randint(195, 230), rng.randint(150, 185), rng.randint(120, 155))
    pen.ellipse([cx - fw * 1.6, cy + fh * 0.8, cx + fw * 1.6, cy + fh * 3], fill=(40, 40, 60))
    pen.rectangle([cx - fw * 0.22, cy + fh * 0.3, cx + fw * 0.22, cy + fh * 0.9], fill=skin)
    pen.ellipse([cx - fw / 2, cy - fh / 2, cx + fw / 2, cy + fh / 2], fill=skin)
    pen.chord([cx - fw / 2 - 4, cy - fh / 2 - 12, cx + fw / 2 + 4, cy + fh * 0.05], 180, 360,
              fill=(50, 35, 25))
    for side in (-1, 1):
        ex, ey = cx + side * fw * 0.2, cy - fh * 0.05
        pen.rectangle([ex - fw * 0.12, ey - fh * 0.12, ex + fw * 0.12, ey - fh * 0.09],
                      fill=(60, 40, 30))
        pen.ellipse([ex - fw * 0.09, ey - fh * 0.04, ex + fw * 0.09, ey + fh * 0.04],
                    fill=(245, 245, 245))
        pen.ellipse([ex - fw * 0.04, ey - fh * 0.04, ex + fw * 0.04, ey + fh * 0.04],
                    fill=(30, 20, 20))
    pen.polygon([(cx, cy), (cx - fw * 0.06, cy + fh * 0.15), (cx + fw * 0.06, cy + fh * 0.15)],
                fill=tuple(c - 40 for c in skin))
    pen.ellipse([cx - fw * 0.18, cy + fh * 0.24, cx + fw * 0.18, cy + fh * 0.31],
                fill=(140, 50, 50))


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


PORTRAIT_SIZE = (480, 600)
PORTRAIT_FACE = DrawnFace(cx=250, cy=230, width=130, height=165)


def draw_portrait(background: tuple[int, int, int] = (70, 90, 120), seed: int = 0) -> bytes:
    """A 480×600 PNG head-and-shoulders portrait with its face at PORTRAIT_FACE."""
    image = Image.new("RGB", PORTRAIT_SIZE, background)
    draw_face(image, PORTRAIT_FACE, seed)
    return _png(image.filter(ImageFilter.GaussianBlur(2.5)))


GROUP_SIZE = (960, 540)
GROUP_FACES = (DrawnFace(cx=300, cy=200, width=110, height=140),
               DrawnFace(cx=680, cy=210, width=110, height=140))


def draw_group_photo() -> bytes:
    """A 960×540 PNG holding two people, faces at GROUP_FACES (left, right)."""
    image = Image.new("RGB", GROUP_SIZE, (90, 110, 90))
    for seed, face in enumerate(GROUP_FACES):
        draw_face(image, face, seed)
    return _png(image.filter(ImageFilter.GaussianBlur(2.0)))


def overlap(box: faces.FaceBox | Crop, face: DrawnFace, size: tuple[int, int]) -> float:
    """Intersection over union of a detected box and the drawn face oval's bounding box."""
    width, height = size
    a = (box.x * width, box.y * height, (box.x + box.w) * width, (box.y + box.h) * height)
    b = (face.cx - face.width / 2, face.cy - face.height / 2, face.cx + face.width / 2,
         face.cy + face.height / 2)
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


@needs_cascade
def test_the_drawn_face_is_found_where_it_was_drawn():
    found = faces.detect_faces(draw_portrait(), faces.PORTRAIT_MIN_FACE)
    assert len(found) == 1
    assert overlap(found[0], PORTRAIT_FACE, PORTRAIT_SIZE) > 0.5
    assert found[0].support > faces.MIN_NEIGHBORS


@needs_cascade
def test_a_plain_image_has_no_faces():
    assert faces.detect_faces(_png(Image.new("RGB", (400, 300), (120, 120, 120)))) == []


@needs_cascade
def test_the_proposed_crop_is_head_and_shoulders_around_the_face():
    proposal = faces.propose_portrait_crop(draw_portrait())
    crop, face = proposal.crop, proposal.face
    assert proposal.note == "Face found: head and shoulders."
    width, height = PORTRAIT_SIZE
    # the face lies inside the crop, with room above it and more below it (the shoulders)
    assert crop.x <= face.x and face.x + face.w <= crop.x + crop.w
    assert crop.y <= face.y and face.y + face.h <= crop.y + crop.h
    above, below = face.y - crop.y, crop.y + crop.h - (face.y + face.h)
    assert 0 < above < below
    assert crop.w * width / (crop.h * height) == pytest.approx(faces.PORTRAIT_ASPECT, abs=0.01)
    assert crop.w < 1.0 and crop.h < 1.0


@needs_cascade
def test_two_faces_in_a_group_photo_give_two_boxes_left_to_right():
    boxes, note = faces.propose_group_boxes(draw_group_photo(), 2)
    assert note == "2 faces found, left to right."
    width, height = GROUP_SIZE
    for box, face in zip(boxes, GROUP_FACES):   # each box holds its face, with the shoulders
        assert box.x * width < face.cx - face.width / 2 < face.cx + face.width / 2 \
            < (box.x + box.w) * width
        assert box.y * height < face.cy - face.height / 2
        assert (box.y + box.h) * height > face.cy + face.height
    assert boxes[0].x + boxes[0].w <= boxes[1].x   # side by side, not overlapping


@needs_cascade
def test_fewer_faces_than_people_gives_equal_strips():
    boxes, note = faces.propose_group_boxes(draw_group_photo(), 3)
    assert note == "2 of 3 faces found; boxes are equal strips — adjust them below."
    assert boxes == faces.group_strips(3)


def test_without_a_face_the_crop_is_a_centred_portrait_at_the_top():
    plain = _png(Image.new("RGB", (800, 600), (200, 200, 200)))
    proposal = faces.propose_portrait_crop(plain)
    assert proposal.face is None
    # 600 high → a 480×600 crop, centred across: x = 160/800
    assert proposal.crop == Crop(x=0.2, y=0.0, w=0.6, h=1.0)


def test_without_the_cascade_detection_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setattr(faces, "CASCADE_FOLDERS", (tmp_path,))
    with pytest.raises(faces.FaceDetectionUnavailable, match="apt-get install -y opencv-data"):
        faces.detect_faces(draw_portrait())
    proposal = faces.propose_portrait_crop(draw_portrait())
    assert proposal.face is None and "opencv-data" in proposal.note


def test_a_crop_that_would_leave_the_image_is_moved_inside_and_shrunk():
    # a face at the top-left corner: the head-and-shoulders box is shifted right and down
    near_edge = faces.FaceBox(x=0.0, y=0.0, w=0.2, h=0.2, support=5)
    crop = faces.head_and_shoulders(near_edge, (1000, 1000))
    assert (crop.x, crop.y) == (0.0, 0.0)
    assert (crop.w, crop.h) == (0.496, 0.62)   # 0.2 × 3.1 high, 4:5 wide
    # a face as large as the image: the crop shrinks to fit
    huge = faces.head_and_shoulders(faces.FaceBox(0.1, 0.1, 0.8, 0.8, 5), (1000, 1000))
    assert huge.h == 1.0 and huge.w == 0.8
