"""The interactive bench's click simulation: the centre of the largest error component, with its class."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.interactive import next_click  # noqa: E402


def test_next_click_is_the_centre_of_the_largest_error():
    reference = np.zeros((12, 12, 3), np.uint8)
    reference[1:10, 1:10, 1] = 1  # a 9 x 9 square the prediction misses ...
    prediction = np.zeros_like(reference)
    prediction[11, 11, 0] = 1  # ... and a one-voxel false positive
    assert next_click(prediction, reference) == ((5, 5, 1), 1)
    prediction = reference.copy()
    prediction[0:12, 0:12, 2] = 1  # now the largest error is a false-positive slice
    voxel, value = next_click(prediction, reference)
    assert value == 0 and voxel[2] == 2 and voxel[:2] in [(5, 5), (5, 6), (6, 5), (6, 6)]
    assert next_click(reference, reference) is None
