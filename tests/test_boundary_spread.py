"""medsegdiff.boundary_spread: a click moves the boundary one voxel around it, where the ensemble found that as likely."""

from __future__ import annotations

import pytest
import torch

from medsegdiff.boundary_spread import spread_along_boundary
from medsegdiff.interaction import UNKNOWN


def _scene():
    """5 x 9 grid: foreground rows 1-3, columns 0-2 (p 0.9); column 3 p 0.35 / 0.3 / 0.25; column 4 p 0.5; else 0.1.
    A foreground click at (2, 3), where the previous result said background at p 0.3."""
    p = torch.full((5, 9), 0.1)
    p[1:4, 0:3] = 0.9
    p[1:4, 3] = torch.tensor([0.35, 0.3, 0.25])
    p[1:4, 4] = 0.5
    previous = {"probs": p[None, None].clone(), "entropy": torch.full((1, 1, 5, 9), 0.7),
                "variance": torch.full((1, 1, 5, 9), 0.2)}
    marks = torch.full((1, 1, 5, 9), UNKNOWN)
    marks[0, 0, 2, 3] = 1
    changed = marks != UNKNOWN
    outputs = {k: v.clone() for k, v in previous.items()}  # the re-sampling kept everything but the mark
    outputs["probs"][0, 0, 2, 3], outputs["entropy"][0, 0, 2, 3] = 1.0, 0.0
    return outputs, previous, marks, changed


def _foreground(result):
    return {tuple(v) for v in (result["probs"][0, 0] > 0.5).nonzero().tolist()}


def test_the_boundary_moves_one_voxel_where_the_ensemble_was_at_least_as_sure():
    outputs, previous, marks, changed = _scene()
    before = _foreground(outputs)
    # reach 1: of the voxels next to the new foreground and within 1 voxel of the click, (1, 3) at p 0.35 and
    # (2, 4) at 0.5 are at least the click's 0.3; (3, 3) at 0.25 is not
    assert _foreground(spread_along_boundary(outputs, previous, marks, changed, 1)) - before == {(1, 3), (2, 4)}
    # reach 2 adds the diagonal neighbours (1, 4) and (3, 4) at p 0.5; column 5 is two voxels out: never
    result = spread_along_boundary(outputs, previous, marks, changed, 2)
    assert _foreground(result) - before == {(1, 3), (2, 4), (1, 4), (3, 4)}
    # they get the class (one-hot) and keep the ensemble's uncertainty: a guess, not a mark
    assert result["probs"][0, 0, 1, 4] == 1 and result["entropy"][0, 0, 1, 4] == pytest.approx(0.7)
    assert torch.equal(result["variance"], outputs["variance"])
    assert result["probs"][0, 0, 3, 3] == pytest.approx(0.25)
    assert spread_along_boundary(outputs, previous, marks, changed, 0) is outputs


def test_given_the_image_the_boundary_moves_only_over_tissue_like_the_corrected():
    outputs, previous, marks, changed = _scene()
    image = torch.ones(1, 1, 5, 9)
    image[0, 0, 1, 3] = 2.0  # brighter than the corrected voxel (2, 3): outside its intensity range
    before = _foreground(outputs)
    assert _foreground(spread_along_boundary(outputs, previous, marks, changed, 1, image)) - before == {(2, 4)}
    # two corrected voxels at 1.0 and 3.0: the range is their 10th-90th percentile, 1.2 .. 2.8
    marks[0, 0, 3, 3], image[0, 0, 3, 3] = 1, 3.0
    changed = marks != UNKNOWN
    image[0, 0, 2, 4], image[0, 0, 1, 4] = 1.1, 2.5
    grown = _foreground(spread_along_boundary(outputs, previous, marks, changed, 2, image)) - before
    assert (1, 3) in grown and (1, 4) in grown and (2, 4) not in grown
    with pytest.raises(ValueError, match="image must be"):
        spread_along_boundary(outputs, previous, marks, changed, 1, image[..., :4])


def test_marked_voxels_keep_their_class_and_agreeing_clicks_spread_nothing():
    outputs, previous, marks, changed = _scene()
    marks[0, 0, 1, 4] = 0  # an earlier background click, not changed now
    result = spread_along_boundary(outputs, previous, marks, changed, 2)
    assert _foreground(result) - _foreground(outputs) == {(1, 3), (2, 4), (3, 4)}
    # a click on a voxel the previous result already gave its class corrects nothing: nothing moves
    marks = torch.full((1, 1, 5, 9), UNKNOWN)
    marks[0, 0, 2, 1] = 1
    same = spread_along_boundary(previous, previous, marks, marks != UNKNOWN, 3)
    assert torch.equal(same["probs"], previous["probs"])


def test_a_background_click_moves_the_boundary_inwards():
    outputs, previous, marks, changed = _scene()
    marks[0, 0, 2, 3] = UNKNOWN
    marks[0, 0, 2, 2] = 0  # the foreground's edge voxel (p 0.9) is background
    changed = marks != UNKNOWN
    outputs = {k: v.clone() for k, v in previous.items()}
    outputs["probs"][0, 0, 2, 2] = 0.0
    # level: background probability 0.1 at the click; the foreground's voxels next to it all have background 0.1
    result = spread_along_boundary(outputs, previous, marks, changed, 1)
    assert _foreground(outputs) - _foreground(result) == {(1, 2), (2, 1), (3, 2)}


def test_maps_must_match_and_reach_be_positive():
    outputs, previous, marks, changed = _scene()
    with pytest.raises(ValueError, match="reach must be"):
        spread_along_boundary(outputs, previous, marks, changed, -1)
    with pytest.raises(ValueError, match="changed must be"):
        spread_along_boundary(outputs, previous, marks, changed[..., :4], 1)


def _doubt_scene():
    """7 x 15 grid: foreground rows 1-5, columns 0-9 (p 0.9), else p 0.1 but for the voxels named below; a
    foreground click at (3, 10), where the previous result said background at p 0.3. Image 1 everywhere but
    (5, 10)."""
    p = torch.full((7, 15), 0.1)
    p[1:6, 0:10] = 0.9
    p[1, 10], p[2, 10], p[3, 10], p[4, 10], p[5, 10] = 0.35, 0.35, 0.3, 0.25, 0.5
    p[0, 2] = 0.4  # just outside the foreground, far from the click, as likely as the corrected voxel
    p[3, 13] = 0.6  # likelier still, but not next to the foreground
    previous = {"probs": p[None, None].clone(), "entropy": torch.full((1, 1, 7, 15), 0.2)}
    marks = torch.full((1, 1, 7, 15), UNKNOWN)
    marks[0, 0, 3, 10] = 1
    outputs = {k: v.clone() for k, v in previous.items()}
    outputs["probs"][0, 0, 3, 10], outputs["entropy"][0, 0, 3, 10] = 1.0, 0.0
    image = torch.ones(1, 1, 7, 15)
    image[0, 0, 5, 10] = 2.0  # unlike the corrected voxel
    return outputs, previous, marks, marks != UNKNOWN, image


def test_doubt_flags_the_voxels_anywhere_like_the_corrected_and_changes_nothing_else():
    from medsegdiff.boundary_spread import doubt_like_corrected

    outputs, previous, marks, changed, image = _doubt_scene()
    result = doubt_like_corrected(outputs, previous, marks, changed, image)
    flagged = {tuple(v) for v in (result["entropy"][0, 0] != outputs["entropy"][0, 0]).nonzero().tolist()}
    # next to the foreground, at least p 0.3 and intensity 1: (1, 10), (2, 10) by the click and (0, 2) far away;
    # not (4, 10) (p 0.25), (5, 10) (brighter), (3, 13) (not next to the foreground) nor the mark itself
    assert flagged == {(1, 10), (2, 10), (0, 2)}
    assert result["entropy"][0, 0, 0, 2] == 1.0
    assert torch.equal(result["probs"], outputs["probs"])  # the label stays the annotator's and the ensemble's
    # without the image the brighter (5, 10) is alike too
    without_image = doubt_like_corrected(outputs, previous, marks, changed)
    assert without_image["entropy"][0, 0, 5, 10] == 1.0


def test_doubt_needs_a_correction_and_matching_maps():
    from medsegdiff.boundary_spread import doubt_like_corrected

    outputs, previous, marks, changed, image = _doubt_scene()
    assert doubt_like_corrected(outputs, previous, marks, torch.zeros_like(changed), image) is outputs
    agreeing = torch.full_like(marks, UNKNOWN)
    agreeing[0, 0, 3, 3] = 1  # foreground already: corrects nothing, flags nothing
    same = doubt_like_corrected(previous, previous, agreeing, agreeing != UNKNOWN, image)
    assert torch.equal(same["entropy"], previous["entropy"])
    with pytest.raises(ValueError, match="image must be"):
        doubt_like_corrected(outputs, previous, marks, changed, image[..., :4])
