"""The composite reference image and the person boxes ([row_min, col_min, row_max, col_max])."""
import io

import numpy as np
import pytest
from PIL import Image

from shared.compose import Composite, canvas_size, compose, default_placements
from shared.scene import (
    Background,
    Crop,
    Line,
    Person,
    Placement,
    ProjectError,
    Scene,
    Settings,
)

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def encode(image, fmt="PNG"):
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def solid(size, color, mode="RGB"):
    return encode(Image.new(mode, size, color))


def halves(size, left, right):
    """An image whose left half is `left` and right half `right`."""
    image = Image.new("RGB", size, left)
    image.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return encode(image)


def person(image, crop=Crop(0, 0, 1, 1), placement=Placement(0.25, 0.5, 0.5)):
    return Person("P", image, crop, placement, "af_heart", "en-us")


def two_person_scene(first, second, background=Background("color", "#102030"), aspect="16:9"):
    return Scene(cast=[first, second], lines=[Line(0, "Hi.")], background=background,
                 settings=Settings(aspect=aspect))


def pixel(composite, row, col):
    return tuple(int(v) for v in np.asarray(composite.image)[row, col])


@pytest.mark.parametrize("resolution, aspect, size", [
    ("480p", "16:9", (896, 448)),
    ("480p", "9:16", (448, 832)),
    ("480p", "1:1", (640, 640)),
    ("480p", "4:3", (704, 576)),
    ("480p", "3:4", (576, 704)),
    ("720p", "16:9", (1280, 704)),
    ("720p", "9:16", (704, 1280)),
    ("720p", "1:1", (960, 960)),
    ("720p", "4:3", (1088, 832)),
    ("720p", "3:4", (832, 1088)),
])
def test_canvas_is_the_official_bucket_nearest_the_aspect(resolution, aspect, size):
    assert canvas_size(Settings(resolution=resolution, aspect=aspect)) == size
    assert size[0] % 16 == 0 and size[1] % 16 == 0


def test_portrait_is_scaled_to_its_height_and_centred_on_its_placement():
    scene = two_person_scene(person(solid((300, 400), RED), placement=Placement(0.25, 0.5, 0.5)),
                             person(solid((300, 400), BLUE), placement=Placement(0.75, 0.5, 0.5)))
    composite = compose(scene)
    assert isinstance(composite, Composite)
    assert composite.image.mode == "RGB" and composite.image.size == (896, 448)
    # height 0.5·448 = 224, width 300·224/400 = 168; centre (224, 224) → cols 140..308.
    assert composite.boxes == [(112, 140, 336, 308), (112, 588, 336, 756)]
    assert pixel(composite, 112, 140) == RED and pixel(composite, 335, 307) == RED
    assert pixel(composite, 111, 140) == (16, 32, 48)  # #102030 just above the box
    assert pixel(composite, 200, 600) == BLUE


def test_crop_selects_the_part_of_the_portrait_that_is_shown():
    cropped = person(halves((200, 200), RED, BLUE), crop=Crop(0.5, 0.0, 0.5, 1.0),
                     placement=Placement(0.5, 0.5, 1.0))
    composite = compose(two_person_scene(cropped, person(solid((50, 50), GREEN),
                                                         placement=Placement(0.9, 0.9, 0.1))))
    row_min, col_min, row_max, col_max = composite.boxes[0]
    assert composite.boxes[0] == (0, 336, 448, 560)  # the 100×200 crop → 224×448
    shown = np.asarray(composite.image)[row_min:row_max, col_min:col_max]
    assert (shown == BLUE).all()


def test_boxes_are_clipped_to_the_canvas():
    big = person(solid((100, 100), RED), placement=Placement(0.0, 0.5, 1.5))
    composite = compose(two_person_scene(big, person(solid((100, 100), BLUE))))
    # 672×672 centred on column 0 and row 224: cols −336..336, rows −112..560.
    assert composite.boxes[0] == (0, 0, 448, 336)


def test_transparent_parts_of_a_portrait_show_the_background():
    cutout = Image.new("RGBA", (100, 100), (*RED, 255))
    cutout.paste((0, 0, 0, 0), (0, 0, 50, 100))  # left half fully transparent
    scene = two_person_scene(person(encode(cutout), placement=Placement(0.5, 0.5, 100 / 448)),
                             person(solid((20, 20), BLUE), placement=Placement(0.95, 0.95, 0.05)))
    composite = compose(scene)
    assert composite.boxes[0] == (174, 398, 274, 498)
    assert pixel(composite, 224, 420) == (16, 32, 48)
    assert pixel(composite, 224, 470) == RED


def test_later_people_are_drawn_in_front():
    scene = two_person_scene(person(solid((100, 100), RED), placement=Placement(0.5, 0.5, 0.5)),
                             person(solid((100, 100), BLUE), placement=Placement(0.5, 0.5, 0.25)))
    assert pixel(compose(scene), 224, 448) == BLUE


def test_color_background_fills_the_canvas():
    scene = two_person_scene(person(solid((20, 20), RED), placement=Placement(0.5, 0.5, 0.05)),
                             person(solid((20, 20), RED), placement=Placement(0.5, 0.5, 0.05)),
                             background=Background("color", "#abcdef"), aspect="1:1")
    image = np.asarray(compose(scene).image)
    assert (image[:300] == (0xab, 0xcd, 0xef)).all()


def test_image_background_covers_the_canvas_centre_cropped():
    # 200×100 photo on a 640×640 canvas: scaled ×6.4 to 1280×640, the middle 640 columns kept,
    # so the red/blue seam lands in the middle of the canvas.
    photo = halves((200, 100), RED, BLUE)
    scene = two_person_scene(person(solid((20, 20), GREEN), placement=Placement(0.5, 0.95, 0.05)),
                             person(solid((20, 20), GREEN), placement=Placement(0.5, 0.95, 0.05)),
                             background=Background("image", image=photo), aspect="1:1")
    composite = compose(scene)
    assert pixel(composite, 100, 300) == RED
    assert pixel(composite, 100, 340) == BLUE


def test_blur_background_is_the_first_portrait_blurred():
    scene = two_person_scene(person(halves((100, 100), RED, BLUE), placement=Placement(0.1, 0.1, 0.1)),
                             person(solid((100, 100), GREEN), placement=Placement(0.9, 0.1, 0.1)),
                             background=Background("blur"))
    composite = compose(scene)
    bottom = np.asarray(composite.image)[440]
    assert tuple(bottom[0]) == RED and tuple(bottom[-1]) == BLUE  # far from the seam: unchanged
    middle = bottom[448]
    assert 60 < middle[0] < 200 and 60 < middle[2] < 200 and middle[1] == 0  # blurred seam


def test_group_photo_boxes_match_the_official_mask_resize():
    # The official example 1: a 2560×1440 photo with bbox [160, 120, 1280, 1080] and
    # [160, 1320, 1280, 2280]. At 480p the official pipeline resizes to 896×504 and crops 28
    # rows from the top; its nearest-neighbour masks then cover exactly these pixels.
    photo = solid((2560, 1440), (90, 90, 90))
    standing = [
        Person("A", None, Crop(120 / 2560, 160 / 1440, 960 / 2560, 1120 / 1440),
               Placement(0.25, 0.5, 0.8), "af_heart", "en-us"),
        Person("B", None, Crop(1320 / 2560, 160 / 1440, 960 / 2560, 1120 / 1440),
               Placement(0.75, 0.5, 0.8), "am_adam", "en-us"),
    ]
    scene = two_person_scene(*standing, background=Background("image", image=photo))
    assert compose(scene).boxes == [(28, 42, 420, 378), (28, 462, 420, 798)]


def test_group_photo_person_outside_the_canvas_is_an_error():
    photo = solid((800, 400), (90, 90, 90))
    at_the_edge = Person("A", None, Crop(0.0, 0.2, 0.1, 0.6), Placement(0.5, 0.5, 0.5),
                         "af_heart", "en-us")
    centre = Person("B", None, Crop(0.45, 0.2, 0.1, 0.6), Placement(0.5, 0.5, 0.5),
                    "am_adam", "en-us")
    scene = two_person_scene(at_the_edge, centre, background=Background("image", image=photo),
                             aspect="9:16")
    with pytest.raises(ProjectError, match=r"^cast\[0\]\.crop: this person lies outside the "
                                           r"448×832 canvas"):
        compose(scene)


def test_portraits_can_stand_in_front_of_a_group_photo():
    photo = solid((896, 448), (90, 90, 90))
    in_photo = Person("A", None, Crop(0.0, 0.0, 0.5, 1.0), Placement(0.25, 0.5, 0.5),
                      "af_heart", "en-us")
    pasted = person(solid((100, 100), RED), placement=Placement(0.75, 0.5, 0.5))
    composite = compose(two_person_scene(in_photo, pasted,
                                         background=Background("image", image=photo)))
    assert composite.boxes == [(0, 0, 448, 448), (112, 560, 336, 784)]


def test_compose_is_deterministic():
    scene = two_person_scene(person(halves((120, 160), RED, BLUE)),
                             person(solid((100, 100), GREEN), placement=Placement(0.7, 0.6, 0.8)),
                             background=Background("blur"))
    assert compose(scene).image.tobytes() == compose(scene).image.tobytes()


def test_default_placements_stand_side_by_side():
    assert default_placements(2) == [Placement(0.25, 0.575, 0.85), Placement(0.75, 0.575, 0.85)]
    three = default_placements(3)
    assert [p.cx for p in three] == pytest.approx([1 / 6, 0.5, 5 / 6])
    assert all(p.height == pytest.approx(1.7 / 3) and p.cy + p.height / 2 == pytest.approx(1.0)
               for p in three)
