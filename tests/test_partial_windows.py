"""A 3D network re-samples only the sliding windows around changed marks (``MedSegDiffInferer(region=...)``).

The window grid of the tiny config is worked out by hand: 8³ windows with overlap 0.5 (scan interval 4) on a
20 x 12 x 8 volume start at 0, 4, 8, 12 along the first axis and 0, 4 along the second: 8 windows. A box in
[1, 3) x [1, 3) touches the window at (0, 0) only, and only that window covers [0, 4) x [0, 4) (the next ones
start at 4): those voxels come out bit-identical to a full run, the rest is the previous result.
"""

import pytest
import torch

from medsegdiff.diffusion import DiffusionConfig
from medsegdiff.inferer import MedSegDiffInferer
from medsegdiff.interaction import UNKNOWN, KnownRegion
from medsegdiff.network import MedSegDiffUNet
from medsegdiff.sampling import EnsembleSampler

DIFFUSION = DiffusionConfig(num_train_timesteps=10, prediction_type="sample")
OUTPUTS = ("probs", "entropy", "variance", "label")
BOX = (slice(1, 3), slice(1, 3), slice(2, 4))  # where the second marks go


def tiny(spatial_dims: int) -> MedSegDiffUNet:
    torch.manual_seed(0)
    size = (8,) * spatial_dims
    return MedSegDiffUNet(
        spatial_dims, 1, 1, size, channels=(8, 16), attention_levels=(False, False), norm_num_groups=4,
        num_head_channels=8,
    ).eval()  # fmt: skip


def inferer() -> MedSegDiffInferer:
    sampler = EnsembleSampler(DIFFUSION, num_inference_steps=2, num_ensemble=2)
    return MedSegDiffInferer(sampler, seed=5, roi_size=(8, 8, 8), overlap=0.5)


def _mark(labels: torch.Tensor, box: tuple[slice, ...], opposite_of: torch.Tensor) -> torch.Tensor:
    """``labels`` with the voxels of ``box`` marked with the class opposite to ``opposite_of`` there."""
    marked = labels.clone()
    index = (0, 0, *box)
    marked[index] = 1 - opposite_of[index]
    return marked


@pytest.fixture(scope="module")
def net3d() -> MedSegDiffUNet:
    return tiny(3)


# the last axis 6 < 8 is padded to a window by the sliding-window inferer, marks included
@pytest.mark.parametrize("depth", [8, 6])
def test_new_marks_resample_only_their_windows(net3d, depth):
    shape = (20, 12, depth)
    volume = torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(1))
    run = inferer()
    plain = run(volume, net3d)
    empty = torch.full((1, 1, *shape), UNKNOWN, dtype=torch.long)
    marks_a = _mark(empty, (slice(14, 16), slice(8, 10), slice(2, 4)), plain["label"])
    first = run(volume, net3d, known=KnownRegion(marks_a))  # R1: marks A, full run
    marks_ab = _mark(marks_a, BOX, first["label"])
    full = run(volume, net3d, known=KnownRegion(marks_ab))  # R2: marks A + B, full run
    full_nfe = run.nfe
    partial = run(volume, net3d, known=KnownRegion(marks_ab), previous=first, region=marks_ab != marks_a)

    exact = torch.zeros(1, 1, *shape, dtype=torch.bool)
    exact[:, :, :4, :4] = True  # covered by the window at (0, 0) only
    assert torch.equal(run.resampled.mask, exact)
    assert run.resampled.describe()["resampled_box"] == [[1, 3], [1, 3], [2, 4]]
    assert (run.resampled.windows, run.resampled.total_windows) == (1, 8)
    assert run.nfe * 8 == full_nfe == 8 * 2  # one window of eight, 2 steps each (members batched)
    for key in OUTPUTS:
        inside, outside = exact.expand_as(full[key]), ~exact.expand_as(full[key])
        assert torch.equal(partial[key][inside], full[key][inside]), key  # bit-identical to the full run
        assert torch.equal(partial[key][outside], first[key][outside]), key  # the previous result, kept
    assert not torch.equal(full["probs"][exact], first["probs"][exact])  # the new marks changed the result there
    marked = marks_ab != UNKNOWN
    assert torch.equal(partial["label"][marked], marks_ab[marked])


def test_region_as_a_box_and_an_empty_region(net3d):
    volume = torch.randn(1, 1, 20, 12, 8, generator=torch.Generator().manual_seed(2))
    run = inferer()
    previous = run(volume, net3d)
    marks = _mark(torch.full((1, 1, 20, 12, 8), UNKNOWN, dtype=torch.long), BOX, previous["label"])
    from_mask = run(volume, net3d, known=KnownRegion(marks), previous=previous, region=marks != UNKNOWN)
    from_box = run(volume, net3d, known=KnownRegion(marks), previous=previous, region=[(1, 3), (1, 3), (2, 4)])
    assert run.nfe == 2
    for key in OUTPUTS:
        assert torch.equal(from_box[key], from_mask[key]), key

    nothing = run(volume, net3d, known=KnownRegion(marks), previous=from_box, region=torch.zeros(20, 12, 8, dtype=torch.bool))
    assert run.nfe == 0 and run.resampled.windows == 0 and run.resampled.describe()["resampled_fraction"] == 0.0
    for key in OUTPUTS:
        assert torch.equal(nothing[key], from_box[key]), key


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"region": [(0, 2), (0, 2), (0, 2)]}, "previous and slices or region go together"),
        ({"previous": "plain"}, "previous and slices or region go together"),
        ({"previous": "plain", "region": [(0, 2), (0, 2), (6, 10)]}, r"region box .*axis 2 \(6, 10\)"),
        ({"previous": "plain", "region": [(0, 2), (3, 3), (0, 2)]}, r"region box .*axis 1 \(3, 3\)"),
        ({"previous": "plain", "region": [(0, 2), (0, 2)]}, "one \\(start, stop\\) per axis"),
        ({"previous": "plain", "region": torch.ones(20, 12, 7, dtype=torch.bool)}, "region mask of shape"),
        ({"previous": "small", "region": [(0, 2), (0, 2), (0, 2)]}, r"previous\['probs'\]"),
        ({"previous": "plain", "slices": [3]}, "needs a 2D network"),
    ],
)
def test_bad_partial_requests_name_the_problem(net3d, kwargs, message):
    volume = torch.randn(1, 1, 20, 12, 8)
    run = inferer()
    results = {"plain": run(volume, net3d), "small": run(volume[..., :6], net3d)}
    if "previous" in kwargs:
        kwargs = {**kwargs, "previous": results[kwargs["previous"]]}
    with pytest.raises(ValueError, match=message):
        run(volume, net3d, **kwargs)


def test_a_region_of_a_2d_network_resamples_the_slices_holding_it():
    net = tiny(2)
    run = MedSegDiffInferer(EnsembleSampler(DIFFUSION, num_inference_steps=1, num_ensemble=1), slice_axis=2,
                            slice_batch_size=1)
    volume = torch.randn(1, 1, 8, 8, 5)
    plain = run(volume, net)
    marks = torch.full((1, 1, 8, 8, 5), -1)
    marks[0, 0, 3, 4, 1], marks[0, 0, 6, 2, 3] = 1, 0
    by_slices = run(volume, net, known=KnownRegion(marks), previous=plain, slices=[1, 3])
    by_mask = run(volume, net, known=KnownRegion(marks), previous=plain, region=marks != -1)
    by_box = run(volume, net, known=KnownRegion(marks), previous=plain, region=[(0, 8), (0, 8), (1, 4)])
    assert run.nfe == 1  # slices 1, 2, 3 of the box in one pass, one step
    for key in OUTPUTS:
        assert torch.equal(by_mask[key], by_slices[key]), key
        # slice 2 holds no mark: re-sampled as it was (to float rounding: batched otherwise)
        torch.testing.assert_close(by_box[key], by_slices[key], atol=1e-5, rtol=0, msg=key)
    assert not torch.equal(by_slices["probs"][..., 1], plain["probs"][..., 1])
    with pytest.raises(ValueError, match="slices and region both given"):
        run(volume, net, previous=plain, slices=[1], region=marks != -1)
