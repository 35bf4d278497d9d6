"""Checkpoint round trip and format checks; Dice / HD95 through monai.metrics; device choice."""

import numpy as np
import pytest
import torch

from medsegdiff import __version__
from medsegdiff.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from medsegdiff.device import select_device
from medsegdiff.diffusion import DiffusionConfig
from medsegdiff.metrics import dice_per_class, hd95_per_class
from medsegdiff.network import MedSegDiffUNet
from medsegdiff.sampling import EnsembleSampler


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    net = MedSegDiffUNet(2, 1, 2, (16, 24), (8, 16), (False, True), norm_num_groups=4, num_head_channels=8).eval()
    with torch.no_grad():  # make the FF-Parser weights non-trivial so they must round-trip too
        for f in net.fusions:
            f.ff_parser.weight.add_(torch.randn_like(f.ff_parser.weight) * 0.1)
    diffusion = DiffusionConfig(num_train_timesteps=20, prediction_type="v_prediction")
    path = save_checkpoint(tmp_path / "m.pt", net, diffusion, {"spacing": 3.0})
    loaded, loaded_diffusion, meta = load_checkpoint(path)
    assert loaded_diffusion == diffusion and meta == {"spacing": 3.0}
    assert read_checkpoint(path)["medsegdiff_version"] == __version__
    image = torch.randn(1, 1, 16, 24)
    sampler = EnsembleSampler(diffusion, "ddim", 3, 2)
    a, b = sampler(net, image, seed=3), sampler(loaded, image, seed=3)
    torch.testing.assert_close(a.member_probs, b.member_probs, rtol=0, atol=0)
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind


def test_foreign_and_broken_files_are_rejected_clearly(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(CheckpointError, match="not a MedSegDiff checkpoint"):
        load_checkpoint(other)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(text)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_dice_and_hd95_per_class():
    ref = np.zeros((20, 20), np.uint8)
    ref[5:15, 5:15] = 1
    pred = np.zeros_like(ref)
    pred[5:15, 5:10] = 1
    assert dice_per_class(ref, ref) == [1.0]
    assert dice_per_class(pred, ref)[0] == pytest.approx(2 * 50 / 150)
    shifted = np.roll(ref, 3, axis=0)
    assert hd95_per_class(shifted, ref, spacing=(2.0, 1.0))[0] == pytest.approx(6.0)
    multi = ref.copy()
    multi[5:10, 5:15] = 2
    assert dice_per_class(multi, multi, num_classes=2) == [1.0, 1.0]
    with pytest.raises(ValueError, match="shape"):
        dice_per_class(ref[:10], ref)


def test_device_selection():
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            select_device("cuda")
    with pytest.raises(ValueError, match="tpu"):
        select_device("tpu")
