"""bench.error_structure: the wrong voxels split into components, and what fixing the largest would give."""

from __future__ import annotations

import numpy as np
import pytest

from bench.error_structure import boundary_intensity, error_structure


def _cube_with_rim_miss_and_island() -> tuple[np.ndarray, np.ndarray]:
    reference = np.zeros((16, 16, 16), np.uint8)
    reference[3:13, 3:13, 3:13] = 1  # 1000 voxels
    label = np.zeros_like(reference)
    label[4:12, 4:12, 4:12] = 1  # 512: the outer one-voxel rim (488 voxels) is missed
    label[0:2, 14:16, 14:16] = 1  # a false-positive island of 8 voxels, apart from the cube
    return label, reference


def test_a_rim_miss_is_the_largest_error_one_voxel_thick():
    label, reference = _cube_with_rim_miss_and_island()
    out = error_structure(label, reference)
    assert out["components"] == 2
    assert out["error_share"] == pytest.approx(496 / 1000)
    assert out["largest"] == {"voxels": 488, "missed": 1.0, "share": pytest.approx(488 / 496), "mean_depth": 1.0,
                              "max_depth": 1.0}
    # the rim fixed: reference + island, 2 * 1000 / (1000 + 1008); both components fixed: the reference itself
    assert out["dice_fixed"][1] == pytest.approx(2000 / 2008)
    assert out["dice_fixed"][5] == pytest.approx(1.0)


def test_a_thick_false_positive_is_deeper():
    reference = np.zeros((16, 16, 16), np.uint8)
    reference[2:6, 2:6, 2:6] = 1
    label = reference.copy()
    label[8:15, 8:15, 8:15] = 1  # a 7-voxel cube of false positive: its centre is 4 voxels from its border
    out = error_structure(label, reference, fixed=(1,))
    assert out["largest"]["missed"] == 0.0 and out["largest"]["max_depth"] == 4.0
    assert out["dice_fixed"] == {1: pytest.approx(1.0)}


def test_a_component_of_misses_and_false_positives_says_how_much_is_missed():
    reference = np.zeros((8, 8, 8), np.uint8)
    reference[2:6, 2:6, 2:4] = 1
    label = np.zeros_like(reference)
    label[2:6, 2:6, 4:5] = 1  # the reference shifted: 32 missed voxels touching 16 false-positive ones
    out = error_structure(label, reference)
    assert out["components"] == 1 and out["largest"]["voxels"] == 48
    assert out["largest"]["missed"] == pytest.approx(32 / 48)


def test_shapes_must_match():
    with pytest.raises(ValueError, match="must match"):
        error_structure(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))


def test_boundary_intensity_is_relative_to_deep_brain():
    reference = np.zeros((16, 16, 16), np.uint8)
    reference[2:14, 2:14, 2:14] = 1
    image = np.full(reference.shape, 0.1)  # outside
    image[2:14, 2:14, 2:14] = 0.4  # the reference's one-voxel inner shell ...
    image[3:13, 3:13, 3:13] = 0.8  # ... and everything inside it, deep brain included
    label = np.zeros_like(reference)
    label[3:13, 3:13, 3:13] = 1  # misses the inner shell
    label[0, 0, 0] = 1  # and one false positive outside
    out = boundary_intensity(image, label, reference)
    assert out == {"inner_shell": pytest.approx(0.5), "outer_shell": pytest.approx(0.125), "missed": pytest.approx(0.5),
                   "false_positive": pytest.approx(0.125)}
    assert boundary_intensity(image, reference, reference)["missed"] is None
    with pytest.raises(ValueError, match="inside its border"):
        boundary_intensity(image, label, np.pad(np.ones((4, 4, 4)), 6))
