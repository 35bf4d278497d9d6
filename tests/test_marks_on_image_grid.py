"""The infer task's last post-transform: marked voxels carry the marked class on the image grid."""

import numpy as np
import torch

from monailabel_app.lib.interaction import ImageMarks, MarksOnImageGrid


def _marks() -> ImageMarks:
    none = np.zeros((0, 3), dtype=np.int64)
    return ImageMarks(np.array([[1, 1, 1]]), np.array([[3, 0, 2]]), none, none)


def _data(with_probability: bool) -> dict:
    data = {"pred": torch.zeros(1, 4, 4, 4, dtype=torch.uint8), "uncertainty": torch.full((1, 4, 4, 4), 0.5)}
    data["pred"][0, 3, 0, 2] = 1
    if with_probability:
        data["probability"] = torch.full((1, 4, 4, 4), 0.4)
    return data


def test_marks_set_label_uncertainty_and_the_probability_asked_for():
    out = MarksOnImageGrid(_marks(), marked_class=1)(_data(with_probability=True))
    assert out["pred"][0, 1, 1, 1] == 1 and out["pred"][0, 3, 0, 2] == 0
    assert out["uncertainty"][0, 1, 1, 1] == 0 and out["uncertainty"][0, 3, 0, 2] == 0
    assert out["uncertainty"][0, 0, 0, 0] == 0.5
    assert out["probability"][0, 1, 1, 1] == 1 and out["probability"][0, 3, 0, 2] == 0
    assert out["probability"][0, 0, 0, 0] == 0.4


def test_without_probabilities_only_label_and_uncertainty_are_painted():
    out = MarksOnImageGrid(_marks(), marked_class=1)(_data(with_probability=False))
    assert "probability" not in out
    assert out["pred"][0, 1, 1, 1] == 1 and out["uncertainty"][0, 3, 0, 2] == 0
