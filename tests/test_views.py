"""A 2D network trained on several views runs along each of them, its members shared out and pooled."""

import math

import pytest
import torch
from torch import nn

from medsegdiff.diffusion import DiffusionConfig
from medsegdiff.inferer import MedSegDiffInferer, pool_views
from medsegdiff.network import MedSegDiffUNet
from medsegdiff.sampling import EnsembleSampler
from medsegdiff.uncertainty import member_variance, predictive_entropy

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
    torch.manual_seed(0)
    network = MedSegDiffUNet(spatial_dims=2, in_channels=1, num_classes=1, channels=(4, 8), attention_levels=(False, False),
                             num_res_blocks=1, norm_num_groups=2, num_head_channels=4).eval()
    volume = torch.rand(1, 1, 8, 8, 6)
    runs = [MedSegDiffInferer(EnsembleSampler(X0, "ddim", 2, 3), views=(2, 1, 0), slice_batch_size=b)(volume, network)
            for b in (1, 5)]
    assert torch.equal(runs[0]["label"], runs[1]["label"])
    torch.testing.assert_close(runs[0]["probs"], runs[1]["probs"], atol=1e-4, rtol=0)


@pytest.mark.parametrize(("views", "members", "match"), [((2, 2), 4, "distinct"), ((3,), 4, "distinct"),
                                                         ((2, 1, 0), 2, "at least as many members")])
def test_bad_views_are_refused(views, members, match):
    with pytest.raises(ValueError, match=match):
        MedSegDiffInferer(EnsembleSampler(X0, "ddim", 2, members), views=views)


def test_a_result_of_several_views_is_not_resampled_in_part():
    volume = torch.rand(1, 1, 6, 7, 5)
    inferer = MedSegDiffInferer(EnsembleSampler(X0, "ddim", 1, 2), views=(2, 0))
    previous = inferer(volume, FirstRows())
    with pytest.raises(ValueError, match="sampled whole"):
        inferer(volume, FirstRows(), previous=previous, slices=[1])
