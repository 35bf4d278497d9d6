"""A 2D network trained on several views runs along each of them, its members shared out and pooled."""

import math

import pytest
import torch
from torch import nn

from medsegdiff.checkpoint import save_checkpoint, slice_views
from medsegdiff.diffusion import DiffusionConfig
from medsegdiff.inferer import RESULT_KEYS, VIEW_OUTPUTS, MedSegDiffInferer, pool_views
from medsegdiff.interaction import KnownRegion
from medsegdiff.network import MedSegDiffUNet
from medsegdiff.sampling import EnsembleSampler
from medsegdiff.transforms import RandSliceViewd, min_volume_size, sample_transforms
from medsegdiff.uncertainty import member_variance, predictive_entropy
from monailabel_app.lib.model_files import ModelInfo

X0 = DiffusionConfig(prediction_type="sample")


class FirstRows(nn.Module):
    """Predicts foreground on the first 3 rows (first in-plane axis) of every slice, whatever x_t and the image."""

    spatial_dims, num_classes, out_channels, config = 2, 1, 1, {}

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return image

    def forward(self, x, t, image_features=None):
        self.calls = getattr(self, "calls", 0) + 1
        out = -torch.ones_like(x)
        out[:, :, :3] = 1.0
        return out


def test_members_are_shared_out_over_the_views_and_pooled():
    volume = torch.rand(1, 1, 6, 7, 5)
    network = FirstRows()
    out = MedSegDiffInferer(EnsembleSampler(X0, "ddim", 2, 5), views=(2, 0), slice_batch_size=64)(volume, network)
    x = torch.arange(6).view(6, 1, 1) < 3  # axial slices: rows are x; sagittal slices (along x): rows are y
    y = torch.arange(7).view(1, 7, 1) < 3
    # members 0, 2, 4 axial, 1, 3 sagittal, identical within a view: where the views disagree they split 3 / 2
    expected = (0.6 * x.float() + 0.4 * y.float()).expand(6, 7, 5)
    torch.testing.assert_close(out["probs"][0, 0], expected)
    torch.testing.assert_close(out["variance"][0, 0], torch.where(x ^ y, 0.24, 0.0).expand(6, 7, 5))
    binary_entropy = -(0.6 * math.log(0.6) + 0.4 * math.log(0.4)) / math.log(2)
    torch.testing.assert_close(out["entropy"][0, 0], torch.where(x ^ y, binary_entropy, 0.0).expand(6, 7, 5),
                               atol=1e-5, rtol=0)
    assert network.calls == 2 * 2  # one batch of slices per view, 2 steps each


def test_pooling_equals_the_statistics_of_all_members_together():
    generator = torch.Generator().manual_seed(0)
    members = torch.rand(5, 1, 2, 4, 4, generator=generator)  # (N, B, C, *spatial)
    shares = [members[:3], members[3:]]
    views = [{"probs": m.mean(dim=0), "variance": member_variance(m)} for m in shares]
    pooled = pool_views(views, [3, 2])
    torch.testing.assert_close(pooled["probs"], members.mean(dim=0))
    torch.testing.assert_close(pooled["variance"], member_variance(members))
    torch.testing.assert_close(pooled["entropy"], predictive_entropy(members.mean(dim=0)))


def test_views_give_the_same_labels_for_any_slice_batch_size():
    network = _unet()
    volume = torch.rand(1, 1, 8, 8, 6)
    runs = [MedSegDiffInferer(EnsembleSampler(X0, "ddim", 2, 3), views=(2, 1, 0), slice_batch_size=b)(volume, network)
            for b in (1, 5)]
    assert torch.equal(runs[0]["label"], runs[1]["label"])
    torch.testing.assert_close(runs[0]["probs"], runs[1]["probs"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("views", [(2, 2), (3,), ()])
def test_bad_views_are_refused(views):
    with pytest.raises(ValueError, match="distinct"):
        MedSegDiffInferer(EnsembleSampler(X0, "ddim", 2, 4), views=views)


def test_fewer_members_than_views_use_the_first_views():
    volume = torch.rand(1, 1, 6, 7, 5)
    one = MedSegDiffInferer(EnsembleSampler(X0, "ddim", 1, 1), views=(0, 2, 1))(volume, FirstRows())
    torch.testing.assert_close(one["probs"][0, 0], (torch.arange(7).view(1, 7, 1) < 3).float().expand(6, 7, 5))
    two = MedSegDiffInferer(EnsembleSampler(X0, "ddim", 1, 2), views=(0, 2, 1))(volume, FirstRows())
    x, y = torch.arange(6).view(6, 1, 1) < 3, torch.arange(7).view(1, 7, 1) < 3
    torch.testing.assert_close(two["probs"][0, 0], (0.5 * x.float() + 0.5 * y.float()).expand(6, 7, 5))


def test_marks_condition_every_view():
    volume = torch.rand(1, 1, 6, 7, 5)
    inferer = MedSegDiffInferer(EnsembleSampler(X0, "ddim", 1, 2), slice_axis=2, views=(2, 0), slice_batch_size=1)
    marks = torch.full((1, 1, 6, 7, 5), -1)
    marks[0, 0, 5, 6, 4] = 1
    marked = inferer(volume, FirstRows(), known=KnownRegion(marks))
    x, y = torch.arange(6).view(6, 1, 1) < 3, torch.arange(7).view(1, 7, 1) < 3
    expected = (0.5 * x.float() + 0.5 * y.float()).expand(6, 7, 5).clone()
    expected[5, 6, 4] = 1.0  # both views keep the mark
    torch.testing.assert_close(marked["probs"][0, 0], expected)


def _unet() -> MedSegDiffUNet:
    torch.manual_seed(0)
    return MedSegDiffUNet(spatial_dims=2, in_channels=1, num_classes=1, channels=(4, 8), attention_levels=(False, False),
                          num_res_blocks=1, norm_num_groups=2, num_head_channels=4).eval()


def test_resampling_the_slices_a_click_crosses_in_every_view_equals_a_whole_run_with_the_click():
    network, volume = _unet(), torch.rand(1, 1, 8, 9, 7)
    inferer = MedSegDiffInferer(EnsembleSampler(X0, "ddim", 2, 3), views=(2, 1, 0), slice_batch_size=2)
    automatic = inferer(volume, network)
    whole_nfe = inferer.nfe
    marks = torch.full((1, 1, 8, 9, 7), -1)
    marks[0, 0, 2:4, 5, 3] = 1
    whole = inferer(volume, network, known=KnownRegion(marks))
    assert not torch.equal(whole["probs"], automatic["probs"])
    partial = inferer(volume, network, known=KnownRegion(marks), previous=automatic, region=marks != -1)
    assert 0 < inferer.nfe < whole_nfe / 2
    assert inferer.resampled_slices == {2: [3], 1: [5], 0: [2, 3]}  # the slices the marks cross, per view
    assert torch.equal(partial["label"], whole["label"])
    for key in (*RESULT_KEYS, VIEW_OUTPUTS):  # the re-sampled slices are batched otherwise: the last bits may differ
        torch.testing.assert_close(partial[key], whole[key], atol=1e-5, rtol=0, msg=key)
    # the voxels that no re-sampled slice of any view holds keep the automatic result
    apart = torch.ones(8, 9, 7, dtype=torch.bool)
    apart[2:4], apart[:, 5], apart[:, :, 3] = False, False, False
    assert torch.equal(partial["probs"][0, 0][apart], automatic["probs"][0, 0][apart])


def test_a_network_of_several_views_refuses_slices_and_a_previous_result_of_one_view():
    network, volume = _unet(), torch.rand(1, 1, 8, 9, 7)
    inferer = MedSegDiffInferer(EnsembleSampler(X0, "ddim", 1, 3), views=(2, 1, 0))
    automatic = inferer(volume, network)
    with pytest.raises(ValueError, match="3 views re-samples a region="):
        inferer(volume, network, previous=automatic, slices=[1])
    one_view = {k: automatic[k] for k in RESULT_KEYS}
    with pytest.raises(ValueError, match=f"needs previous\\['{VIEW_OUTPUTS}'\\]"):
        inferer(volume, network, previous=one_view, region=[(0, 1), (0, 1), (0, 1)])


class Recorder(nn.Module):
    """Keeps the slices it is given (the image channel), predicts background."""

    spatial_dims, num_classes, out_channels, config = 2, 1, 1, {}

    def __init__(self) -> None:
        super().__init__()
        self.slices: list[torch.Tensor] = []

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        self.slices.extend(image[:, 0])
        return image

    def forward(self, x, t, image_features=None):
        return -torch.ones_like(x)


@pytest.mark.parametrize("view", [0, 1, 2])
def test_training_slices_of_a_view_are_the_slices_inference_cuts(view):
    volume = torch.rand(1, 5, 6, 7)  # (C, X, Y, Z)
    transform = RandSliceViewd((view,), slice_axis=2)
    moved = transform({"image": volume, "label": volume})["image"]  # the sample pipeline then cuts along axis 2
    recorder = Recorder()
    MedSegDiffInferer(EnsembleSampler(X0, "ddim", 1, 1), views=(view,), slice_batch_size=64)(volume[None], recorder)
    assert len(recorder.slices) == volume.shape[1 + view]
    for s, inferred in enumerate(recorder.slices):
        assert torch.equal(moved[0, :, :, s], inferred)


def test_samples_of_a_three_view_network_come_from_every_view():
    image, label = torch.rand(1, 20, 24, 12), (torch.rand(1, 20, 24, 12) > 0.5).float()
    transform = RandSliceViewd((2, 1, 0), slice_axis=2)
    transform.set_random_state(0)
    shapes = {tuple(transform({"image": image, "label": label})["label"].shape) for _ in range(30)}
    assert shapes == {(1, 20, 24, 12), (1, 20, 12, 24), (1, 24, 12, 20)}
    (sample,) = sample_transforms((16, 16), 2, slice_axis=2, views=(2, 1, 0))({"image": image, "label": label})
    assert sample["image"].shape == (1, 16, 16)
    assert min_volume_size((16, 16), 2, 2, views=(2, 1, 0)) == [16, 16, 16]
    assert min_volume_size((16, 16), 2, 2) == [16, 16, -1]


def test_checkpoints_say_which_views_they_run_along(tmp_path):
    assert slice_views({"views": [2, 1, 0]}) == (2, 1, 0)
    assert slice_views({"slice_axis": 1}) == (1,) and slice_views({}) == (2,)
    for bad in ([2, 2], [3], [], "axial"):
        with pytest.raises(ValueError, match="views"):
            slice_views({"views": bad})
    network = MedSegDiffUNet(spatial_dims=2, in_channels=1, num_classes=1, channels=(4, 8), attention_levels=(False, False),
                             num_res_blocks=1, norm_num_groups=2, num_head_channels=4)
    save_checkpoint(tmp_path / "views.pt", network, X0, {"views": [2, 1, 0]})
    save_checkpoint(tmp_path / "axial.pt", network, X0, {})
    save_checkpoint(tmp_path / "bad.pt", network, X0, {"views": [0, 0]})
    assert ModelInfo.read(tmp_path / "views.pt").views == (2, 1, 0)
    assert ModelInfo.read(tmp_path / "axial.pt").views == (2,)
    with pytest.raises(ValueError, match="bad.pt"):
        ModelInfo.read(tmp_path / "bad.pt")
