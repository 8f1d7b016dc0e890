"""PSNR, SSIM against scikit-image, and LPIPS loading / formula with stand-in weights."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from skimage.metrics import structural_similarity

from manyview.errors import ManyviewError
from manyview.metrics import image as image_metrics
from manyview.metrics.image import LPIPS_ENV, lpips, lpips_available, psnr, ssim

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real" / "family"


def _skimage_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    return structural_similarity(a.double().numpy(), b.double().numpy(), channel_axis=0, gaussian_weights=True,
                                 sigma=1.5, use_sample_covariance=False, data_range=1.0)


def test_psnr_hand_values():
    a = torch.full((2, 3, 8, 8), 0.5)
    b = torch.full((2, 3, 8, 8), 0.6)
    assert torch.allclose(psnr(a, b), torch.full((2,), 20.0), atol=1e-4)  # mse 0.01
    assert torch.allclose(psnr(a * 255, b * 255, data_range=255.0), torch.full((2,), 20.0), atol=1e-4)
    assert torch.isinf(psnr(a, a)).all()
    with pytest.raises(ManyviewError):
        psnr(a, b[..., :4])


def test_ssim_matches_skimage_on_random_images():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 40, 37, generator=g, dtype=torch.float64)
    b = (a + 0.15 * torch.randn(a.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    ours = ssim(a, b)
    ref = torch.tensor([_skimage_ssim(a[i], b[i]) for i in range(3)], dtype=torch.float64)
    assert torch.allclose(ours, ref, atol=1e-10)
    assert torch.allclose(ssim(a.float(), b.float()).double(), ref, atol=1e-4)
    assert torch.allclose(ssim(a, a), torch.ones(3, dtype=torch.float64))
    with pytest.raises(ManyviewError):
        ssim(a[..., :10, :10], b[..., :10, :10])


def test_ssim_matches_skimage_on_real_images():
    if not REAL.exists():
        pytest.skip(f"real images not found at {REAL}")
    imgs = [torch.from_numpy(np.array(Image.open(REAL / f"{i:03d}.jpg").convert("RGB").resize((160, 90))))
            .permute(2, 0, 1).double() / 255 for i in (0, 1)]
    ours = float(ssim(imgs[0], imgs[1]))
    assert ours == pytest.approx(_skimage_ssim(imgs[0], imgs[1]), abs=1e-4)
    assert float(ssim(imgs[0].float(), imgs[1].float())) == pytest.approx(ours, abs=1e-4)


# ----------------------------------------------------------------------------------------------- LPIPS
ALEX_CONVS = {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3), 10: (256, 256, 3)}
ALEX_CHANNELS = [64, 192, 384, 256, 256]


def _stand_in_alex(seed=0):
    """Random tensors in the torchvision ``features.*`` + lpips ``lin*.model.1.weight`` layout."""
    g = torch.Generator().manual_seed(seed)
    backbone = {}
    for i, (o, c, k) in ALEX_CONVS.items():
        backbone[f"features.{i}.weight"] = torch.randn(o, c, k, k, generator=g) * (2 / (c * k * k)) ** 0.5
        backbone[f"features.{i}.bias"] = 0.01 * torch.randn(o, generator=g)
    lin = {f"lin{k}.model.1.weight": torch.rand(1, ch, 1, 1, generator=g) for k, ch in enumerate(ALEX_CHANNELS)}
    return backbone, lin


def _functional_alex_lpips(a, b, backbone, lin):
    """LPIPS v0.1 written out with functional ops, from the state dict."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def feats(x):
        x = ((2 * x - 1) - shift) / scale
        out = []
        for i, (stride, pad, pool_before) in zip([0, 3, 6, 8, 10], [(4, 2, False), (1, 2, True), (1, 1, True),
                                                                     (1, 1, False), (1, 1, False)]):
            if pool_before:
                x = F.max_pool2d(x, 3, 2)
            x = F.relu(F.conv2d(x, backbone[f"features.{i}.weight"], backbone[f"features.{i}.bias"], stride, pad))
            out.append(x)
        return out

    total = 0
    for k, (fa, fb) in enumerate(zip(feats(a), feats(b))):
        na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total = total + ((na - nb) ** 2 * lin[f"lin{k}.model.1.weight"]).sum(1).mean((1, 2))
    return total


def test_lpips_unavailable_without_weights(monkeypatch):
    monkeypatch.delenv(LPIPS_ENV, raising=False)
    assert not lpips_available()
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(ManyviewError, match=LPIPS_ENV):
        lpips(x, x)


def test_lpips_from_combined_safetensors(tmp_path, monkeypatch):
    backbone, lin = _stand_in_alex()
    path = tmp_path / "lpips_alex.safetensors"
    save_file({**backbone, **lin}, str(path))
    monkeypatch.setenv(LPIPS_ENV, str(path))
    image_metrics._load_lpips.cache_clear()
    assert lpips_available()
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 3, 64, 72, generator=g), torch.rand(2, 3, 64, 72, generator=g)
    d = lpips(a, b)
    assert d.shape == (2,)
    assert torch.allclose(d, _functional_alex_lpips(a, b, backbone, lin), rtol=1e-5)
    assert torch.allclose(lpips(b, a), d, rtol=1e-6)
    assert torch.allclose(lpips(a, a), torch.zeros(2), atol=1e-7)
    assert lpips(a[None], b[None]).shape == (1, 2)


def test_lpips_from_lpips_and_torchvision_files(tmp_path):
    backbone, lin = _stand_in_alex(seed=2)
    torch.save({**backbone, "classifier.1.weight": torch.zeros(2, 2)}, tmp_path / "alexnet-owt-7be5be79.pth")
    torch.save(lin, tmp_path / "alex.pth")
    image_metrics._load_lpips.cache_clear()
    assert lpips_available(weights=tmp_path)
    assert not lpips_available("vgg", weights=tmp_path)  # no vgg files there
    a, b = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    assert torch.allclose(lpips(a, b, weights=tmp_path), _functional_alex_lpips(a, b, backbone, lin), rtol=1e-5)


def test_lpips_taps_have_the_published_channels_and_strides():
    for net, chans, sizes in (("vgg", [64, 128, 256, 512, 512], [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]),
                              ("alex", ALEX_CHANNELS, [(15, 15), (7, 7), (3, 3), (3, 3), (3, 3)])):
        model = image_metrics._LPIPS(net)
        model.load_state_dict({k: torch.zeros(v.shape) for k, v in model.state_dict().items()}, assign=True)
        taps = model._taps(torch.rand(1, 3, *((32, 48) if net == "vgg" else (64, 64))))
        assert [t.shape[1] for t in taps] == chans
        assert [tuple(t.shape[2:]) for t in taps] == sizes


class Payload:  # an arbitrary object in a pickle: refused by weights_only loading
    pass


def test_lpips_rejects_bad_weight_files(tmp_path):
    image_metrics._load_lpips.cache_clear()
    wrong = tmp_path / "wrong.safetensors"
    save_file({"features.0.weight": torch.zeros(1)}, str(wrong))
    with pytest.raises(ManyviewError, match="wrong.safetensors"):
        lpips(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32), weights=wrong)
    backbone, lin = _stand_in_alex()
    backbone["features.3.weight"] = torch.zeros(8, 8, 5, 5)  # another network's shapes
    misfit = tmp_path / "misfit.safetensors"
    save_file({**backbone, **lin}, str(misfit))
    with pytest.raises(ManyviewError, match="misfit.safetensors: checkpoint does not fit LPIPS"):
        lpips(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32), weights=misfit)

    torch.save({"x": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ManyviewError, match="evil.pth"):
        lpips(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32), weights=tmp_path / "evil.pth")
    assert not lpips_available(weights=tmp_path / "missing")


def test_matrix_blur_equals_the_convolution_reference_with_gradients():
    """SSIM's banded-matrix blur (the fast path used in splat training) against two conv2d passes."""
    from manyview.metrics.image import (
        _gaussian_kernel,
        gaussian_blur_valid,
        gaussian_blur_valid_reference,
    )

    k = _gaussian_kernel(1.5, 3.5, torch.float64, "cpu")
    g = torch.Generator().manual_seed(3)
    for shape in [(11, 11), (2, 5, 20, 31), (3, 64, 17)]:
        x = torch.rand(shape, generator=g, dtype=torch.float64, requires_grad=True)
        weights = torch.rand(gaussian_blur_valid_reference(x, k).shape, generator=g, dtype=torch.float64)
        fast, ref = gaussian_blur_valid(x, k), gaussian_blur_valid_reference(x, k)
        assert fast.shape == ref.shape and torch.allclose(fast, ref, atol=1e-12)
        (grad_fast,) = torch.autograd.grad((fast * weights).sum(), x)
        (grad_ref,) = torch.autograd.grad((ref * weights).sum(), x)
        assert torch.allclose(grad_fast, grad_ref, atol=1e-12)
