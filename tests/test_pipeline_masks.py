"""Person masks for speaker routing, as the official pipeline draws and crops them."""
from __future__ import annotations

import torch

from daemon.pipeline.masks import reference_masks, resize_and_center_crop, source_masks


def test_boxes_are_row_min_col_min_row_max_col_max_half_open():
    masks = source_masks(8, 12, speakers=2, boxes=[[1, 2, 4, 5], [5, 7, 8, 12]])
    rows, cols = torch.nonzero(masks[0], as_tuple=True)
    assert (rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()) == (1, 3, 2, 4)
    rows, cols = torch.nonzero(masks[1], as_tuple=True)
    assert (rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()) == (5, 7, 7, 11)
    assert masks[2].sum().item() == 8 * 12 - 9 - 15                        # background = no person


def test_default_masks_are_left_and_right_halves_inset_by_five_percent():
    masks = source_masks(40, 60, speakers=2)
    # rows [int(40·0.05), int(40·0.95)) = [2, 38); half = 30: cols [1, 28) and [31, 58)
    assert torch.equal(torch.nonzero(masks[0].sum(1)).flatten(), torch.arange(2, 38))
    assert torch.equal(torch.nonzero(masks[0].sum(0)).flatten(), torch.arange(1, 28))
    assert torch.equal(torch.nonzero(masks[1].sum(0)).flatten(), torch.arange(31, 58))
    assert torch.equal(masks[2], 1 - masks[0] - masks[1])


def test_one_speaker_gets_three_all_ones_masks():
    masks = reference_masks(30, 40, 16, 16, 2, 2, speakers=1)
    assert torch.equal(masks, torch.ones(3, 2, 2))


def test_resize_covers_the_target_then_crops_the_centre_rounding_half_to_even():
    rows = torch.arange(11.0)[None, :, None].expand(1, 11, 10)
    # scale 1 (width already fits): crop 8 of 11 rows, offset round(1.5) = 2
    assert resize_and_center_crop(rows, 8, 10)[0, :, 0].tolist() == [2, 3, 4, 5, 6, 7, 8, 9]
    # offset round(0.5) = 0
    assert resize_and_center_crop(rows[:, :9], 8, 10)[0, :, 0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7]


def test_source_masks_reach_the_latent_grid_through_the_image_crop():
    # 90×120 source → cover 48×80 at scale 2/3 → 60×80, crop rows 6..54 → latent 6×10
    masks = reference_masks(90, 120, 48, 80, 6, 10, speakers=2, boxes=[[0, 0, 90, 60], [0, 60, 90, 120]])
    assert masks.shape == (3, 6, 10)
    assert torch.equal(masks[0], torch.tensor([[1.0] * 5 + [0.0] * 5] * 6))
    assert torch.equal(masks[1], 1 - masks[0]) and not masks[2].any()
