"""The ITK k-means example head (Debian insighttoolkit5-examples) as a labelled scan."""

from __future__ import annotations

import numpy as np
import pytest

from medsegdiff.itk_data import ITK_DATA_DIR, load_itk_kmeans_head

pytestmark = pytest.mark.skipif(
    not (ITK_DATA_DIR / "KmeansTest_T1UCharRaw.nii.gz").is_file(), reason="insighttoolkit5-examples not installed"
)


def test_itk_head_is_ras_with_a_brain_mask_inside_the_head():
    scan = load_itk_kmeans_head()
    assert scan.image.shape == (128, 62, 128) and scan.label.shape == scan.image.shape
    assert scan.spacing == pytest.approx((2.0, 3.0, 2.0))
    assert 0.10 < scan.label.mean() < 0.16  # the skull strip covers 12.6 % of the voxels
    brain, head = scan.image[scan.label > 0], scan.image[scan.label == 0]
    assert np.median(brain) > 2 * np.median(head)  # the mask sits on tissue, not on air
    centre = np.argwhere(scan.label > 0).mean(axis=0)
    assert np.all(np.abs(centre - np.array(scan.label.shape) / 2) < np.array(scan.label.shape) / 4)
