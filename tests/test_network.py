"""MedSegDiff U-Net: shapes (2D/3D, non-square, odd sizes), FF-Parser, attentive fusion, gradients, bad arguments."""

import pytest
import torch

from medsegdiff.blocks import AttentiveFusion, ChannelLayerNorm, FFParser, ResidualBlock, attentive_fusion
from medsegdiff.network import MedSegDiffUNet


def tiny(spatial_dims, size, num_classes=1, **kw):
    torch.manual_seed(0)
    return MedSegDiffUNet(
        spatial_dims, 1, num_classes, size, channels=(8, 16), attention_levels=(False, True),
        norm_num_groups=4, num_head_channels=8, **kw,
    )


@pytest.mark.parametrize(
    "spatial_dims,size,num_classes",
    [(2, (32, 32), 1), (2, (24, 40), 3), (2, (31, 17), 2), (3, (16, 16, 16), 1), (3, (12, 16, 10), 2)],
)
def test_output_shape_matches_mask(spatial_dims, size, num_classes):
    net = tiny(spatial_dims, size, num_classes)
    x = torch.randn(2, num_classes, *size)
    image = torch.randn(2, 1, *size)
    out = net(x, torch.tensor([3, 7]), context=image)
    assert out.shape == x.shape


@pytest.mark.parametrize("time_injection", ["add", "adagn"])
def test_time_changes_output(time_injection):
    net = tiny(2, (16, 16), time_injection=time_injection)
    x, image = torch.randn(1, 1, 16, 16), torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        a = net(x, torch.tensor([1]), context=image)
        b = net(x, torch.tensor([900]), context=image)
    assert not torch.allclose(a, b)


def test_other_input_size_than_training_size_works_and_resamples_ffparser():
    net = tiny(2, (32, 32))
    out = net(torch.randn(1, 1, 48, 20), torch.tensor([5]), context=torch.randn(1, 1, 48, 20))
    assert out.shape == (1, 1, 48, 20)
    parser = net.fusions[0].ff_parser
    w = parser.complex_weight((48, 11))
    assert w.shape == (8, 48, 11)


def test_image_features_reuse_gives_same_output():
    net = tiny(2, (24, 24)).eval()
    x, image, t = torch.randn(3, 1, 24, 24), torch.randn(3, 1, 24, 24), torch.tensor([10, 20, 30])
    with torch.no_grad():
        direct = net(x, t, context=image)
        cached = net(x, t, image_features=net.encode_image(image))
    torch.testing.assert_close(direct, cached)


@pytest.mark.parametrize("spatial_dims,size", [(2, (8, 12)), (3, (6, 8, 4))])
def test_ffparser_is_identity_at_init(spatial_dims, size):
    parser = FFParser(spatial_dims, 4, size)
    x = torch.randn(2, 4, *size)
    torch.testing.assert_close(parser(x), x, atol=1e-5, rtol=1e-5)


def test_ffparser_weight_learns_and_changes_output():
    parser = FFParser(2, 3, (8, 8))
    x = torch.randn(2, 3, 8, 8)
    target = torch.roll(x, 1, dims=-1)
    opt = torch.optim.SGD(parser.parameters(), lr=0.5)
    first = None
    for _ in range(20):
        loss = ((parser(x) - target) ** 2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        assert parser.weight.grad is not None and parser.weight.grad.abs().sum() > 0
        opt.step()
    assert loss.item() < first
    assert not torch.allclose(parser(x), x, atol=1e-4)


def test_gradients_reach_ffparser_through_whole_network():
    net = tiny(2, (16, 16))
    out = net(torch.randn(2, 1, 16, 16), torch.tensor([1, 2]), context=torch.randn(2, 1, 16, 16))
    out.square().mean().backward()
    for fusion in net.fusions:
        assert fusion.ff_parser.weight.grad is not None
        assert fusion.ff_parser.weight.grad.abs().sum() > 0
    assert net.image_stem.weight.grad.abs().sum() > 0


def test_attentive_fusion_matches_eq3_hand_computed():
    # Two channels, one pixel: LN over channels of (1, 3) is (-1, 1); of (2, 6) is (-1, 1).
    m_image = torch.tensor([1.0, 3.0]).reshape(1, 2, 1, 1)
    m_mask = torch.tensor([2.0, 6.0]).reshape(1, 2, 1, 1)
    ln = ChannelLayerNorm(2, eps=0.0)
    a = attentive_fusion(m_image, ln(m_image), ln(m_mask))
    # (LN(m_I) * LN(m_x)) * m_I = ((-1)(-1)·1, (1)(1)·3) = (1, 3)
    torch.testing.assert_close(a.flatten(), torch.tensor([1.0, 3.0]))
    m_mask2 = torch.tensor([6.0, 2.0]).reshape(1, 2, 1, 1)  # LN = (1, -1)
    a2 = attentive_fusion(m_image, ln(m_image), ln(m_mask2))
    torch.testing.assert_close(a2.flatten(), torch.tensor([-1.0, -3.0]))
    fusion = AttentiveFusion(2, 2, (1, 1), use_ff_parser=False)
    fusion.norm_image.eps = fusion.norm_mask.eps = 0.0
    torch.testing.assert_close(fusion(m_image, m_mask2).flatten(), torch.tensor([0.0, 0.0]))


def test_residual_block_without_residual_is_plain_conv_block():
    block = ResidualBlock(2, 4, 8, norm_num_groups=4, embedding_dim=None, residual=False)
    assert isinstance(block.skip, torch.nn.Identity) and not block.residual
    assert block(torch.randn(1, 4, 8, 8)).shape == (1, 8, 8, 8)


def test_bad_arguments_raise_value_error_naming_value():
    with pytest.raises(ValueError, match="spatial_dims"):
        MedSegDiffUNet(4, spatial_size=(8, 8, 8, 8))
    with pytest.raises(ValueError, match="num_classes"):
        MedSegDiffUNet(2, num_classes=0, spatial_size=(8, 8))
    with pytest.raises(ValueError, match="time_injection"):
        MedSegDiffUNet(2, spatial_size=(8, 8), time_injection="concat", channels=(8, 16), attention_levels=(False, False), norm_num_groups=4)
    net = tiny(2, (16, 16))
    with pytest.raises(ValueError, match="3 channels"):
        net(torch.randn(1, 3, 16, 16), torch.tensor([1]), context=torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="image has 2 channels"):
        net(torch.randn(1, 1, 16, 16), torch.tensor([1]), context=torch.randn(1, 2, 16, 16))


@pytest.mark.parametrize("skip_source", ["mask", "fused", "concat"])
def test_skip_source_changes_what_the_decoder_sees(skip_source):
    torch.manual_seed(0)
    net = MedSegDiffUNet(
        2, 1, 1, (16, 16), channels=(8, 16), attention_levels=(False, False), norm_num_groups=4, skip_source=skip_source
    ).eval()
    x, t = torch.randn(1, 1, 16, 16), torch.tensor([3])
    image_a, image_b = torch.randn(1, 1, 16, 16), torch.randn(1, 1, 16, 16)
    features = {}
    net.decoder_blocks[-1][0].register_forward_hook(lambda m, i, o: features.setdefault("in", []).append(i[0]))
    with torch.no_grad():
        net(x, t, context=image_a), net(x, t, context=image_b)
    skip_a, skip_b = (f[:, 8:] for f in features["in"])  # the level-0 skip half of the decoder input
    expected_width = 16 if skip_source == "concat" else 8
    assert skip_a.shape[1] == expected_width
    # with mask skips the level-0 skip does not depend on the image; with fused/concat it does
    assert torch.equal(skip_a, skip_b) == (skip_source == "mask")


def test_background_channel_and_context_slices_size_the_network():
    net = MedSegDiffUNet(2, 1, 3, (16, 16), channels=(8, 16), attention_levels=(False, False), norm_num_groups=4,
                         background_channel=True, context_slices=2)
    assert net.out_channels == 4 and net.image_channels == 5
    out = net(torch.randn(2, 4, 16, 16), torch.tensor([1, 2]), context=torch.randn(2, 5, 16, 16))
    assert out.shape == (2, 4, 16, 16)
    with pytest.raises(ValueError, match="expects 5"):
        net(torch.randn(2, 4, 16, 16), torch.tensor([1, 2]), context=torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match="skip_source"):
        MedSegDiffUNet(2, skip_source="image")
    with pytest.raises(ValueError, match="context_slices"):
        MedSegDiffUNet(3, spatial_size=(8, 8, 8), context_slices=1)
