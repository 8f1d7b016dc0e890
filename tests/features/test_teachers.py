"""Teachers: the packaged EfficientNet-Lite0 weights (strict keys, ImageNet behaviour), the released DINOv2 and CLIP
layouts (written here from the releases, not read off manyview's modules), the Fast3R encoder, and the errors a
user meets when weights are absent or do not fit."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from manyview.errors import ManyviewError
from manyview.features.clip import CLIP_CONFIGS, ClipVision, ClipVisionConfig
from manyview.features.dinov2 import DINOV2_CONFIGS, DinoV2
from manyview.features.efficientnet import EfficientNetLite0, SameConv2d, lite0_weights_path, load_lite0
from manyview.features.teachers import (
    DEFAULT_TEACHER,
    TEACHERS,
    EfficientNetTeacher,
    load_clip_vision,
    load_teacher,
)
from manyview.hub import read_state_dict


# --------------------------------------------------------------------------------------------- EfficientNet
@pytest.fixture(scope="module")
def lite0():
    return load_lite0()


def test_the_packaged_efficientnet_file_fits_the_network_key_for_key(lite0):
    tensors, _ = read_state_dict(lite0_weights_path())
    expected = lite0.state_dict()
    assert set(tensors) == set(expected)
    assert all(tensors[k].shape == expected[k].shape for k in expected)
    assert len([k for k in tensors if k.endswith("_depthwise_conv.weight")]) == 16  # Lite0: 16 MBConv blocks


@pytest.mark.parametrize("size", [8, 9])
def test_same_padding_follows_tensorflow(size):
    """Stride 2, kernel 3: TensorFlow pads (0, 1) on an even side and (1, 1) on an odd one; out = ceil(in / 2)."""
    conv = SameConv2d(2, 3, 3, 2)
    x = torch.randn(1, 2, size, size)
    pad = (0, 1, 0, 1) if size % 2 == 0 else (1, 1, 1, 1)
    expected = F.conv2d(F.pad(x, pad), conv.weight, stride=2)
    assert conv(x).shape[-1] == math.ceil(size / 2)
    torch.testing.assert_close(conv(x), expected)


def test_efficientnet_recognises_teddy_bears_in_real_photos(lite0, shared_dir):
    """The weights and the input normalisation are those of an ImageNet classifier: ImageNet class 850 is 'teddy
    bear', and the co3d teddy-bear photos are classified as such."""
    from manyview.io.images import ImageLoadPolicy, load_images

    files = sorted((shared_dir / "data" / "real" / "teddybear").glob("*.jpg"))[::2][:4]
    if not files:
        pytest.skip("no teddy-bear photos")
    images = load_images(files, ImageLoadPolicy(size=(224, 224), crop="center"))[0].images
    with torch.no_grad():
        top1 = lite0(images).argmax(dim=-1)
    assert (top1 == 850).sum() >= 3, top1.tolist()


def test_the_default_teacher_gives_stride_8_features_of_its_dimension(lite0):
    teacher = load_teacher(DEFAULT_TEACHER)
    images = torch.rand(2, 3, 70, 50)  # not multiples of 32: resized to the nearest (64 x 64)
    with torch.no_grad():
        out = teacher(images)
    assert teacher.stride == 8 and teacher.dim == 40 + 112
    assert out.shape == (2, teacher.dim, *teacher.grid(70, 50)) == (2, 152, 8, 8)
    assert not any(p.requires_grad for p in teacher.parameters())
    stage8, stage16 = out[:, :40].norm(dim=1), out[:, 40:].norm(dim=1)
    torch.testing.assert_close(stage8, torch.ones_like(stage8))
    torch.testing.assert_close(stage16, torch.ones_like(stage16))  # each stage unit length per pixel


def test_efficientnet_stage_choices_set_dim_and_stride():
    net = EfficientNetLite0()
    t = EfficientNetTeacher(net, stages=(4,))
    assert (t.dim, t.stride) == (112, 16)
    with pytest.raises(ManyviewError, match="stages"):
        EfficientNetTeacher(net, stages=(9,))


# --------------------------------------------------------------------------------------------- DINOv2
def released_dinov2_layout(dim: int, depth: int, registers: int, swiglu: bool) -> dict[str, tuple]:
    """Key -> shape of facebookresearch/dinov2's hub checkpoints (img_size 518, patch 14, block_chunks 0)."""
    keys = {"cls_token": (1, 1, dim), "pos_embed": (1, 1 + 37 * 37, dim), "mask_token": (1, dim),
            "patch_embed.proj.weight": (dim, 3, 14, 14), "patch_embed.proj.bias": (dim,),
            "norm.weight": (dim,), "norm.bias": (dim,)}
    if registers:
        keys["register_tokens"] = (1, registers, dim)
    hidden = 4 * dim
    for i in range(depth):
        b = f"blocks.{i}."
        keys.update({b + "norm1.weight": (dim,), b + "norm1.bias": (dim,), b + "norm2.weight": (dim,),
                     b + "norm2.bias": (dim,), b + "attn.qkv.weight": (3 * dim, dim), b + "attn.qkv.bias": (3 * dim,),
                     b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,), b + "ls1.gamma": (dim,),
                     b + "ls2.gamma": (dim,)})
        if swiglu:
            h = (int(hidden * 2 / 3) + 7) // 8 * 8
            keys.update({b + "mlp.w12.weight": (2 * h, dim), b + "mlp.w12.bias": (2 * h,),
                         b + "mlp.w3.weight": (dim, h), b + "mlp.w3.bias": (dim,)})
        else:
            keys.update({b + "mlp.fc1.weight": (hidden, dim), b + "mlp.fc1.bias": (hidden,),
                         b + "mlp.fc2.weight": (dim, hidden), b + "mlp.fc2.bias": (dim,)})
    return keys


@pytest.mark.parametrize("name,dim,depth,registers,swiglu", [
    ("dinov2-vits14", 384, 12, 0, False), ("dinov2-vits14-reg", 384, 12, 4, False),
    ("dinov2-vitb14", 768, 12, 0, False), ("dinov2-vitl14-reg", 1024, 24, 4, False),
    ("dinov2-vitg14", 1536, 40, 0, True), ("dinov2-vitg14-reg", 1536, 40, 4, True),
])
def test_dinov2_modules_have_the_released_layout(name, dim, depth, registers, swiglu):
    with torch.device("meta"):
        model = DinoV2(DINOV2_CONFIGS[name])
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == released_dinov2_layout(dim, depth, registers, swiglu)


def _random_state(layout: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) * 0.02 for k, shape in layout.items()}


@pytest.fixture(scope="module")
def vits14_reg_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("dinov2") / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(_random_state(released_dinov2_layout(384, 12, 4, False)), path)
    return path


def test_a_released_dinov2_checkpoint_loads_with_no_missing_or_unexpected_key(vits14_reg_file):
    teacher = load_teacher("dinov2-vits14-reg", weights=vits14_reg_file.parent)  # a folder holding the file
    assert (teacher.dim, teacher.stride) == (384, 14)
    state = teacher.net.state_dict()
    saved = torch.load(vits14_reg_file, weights_only=True)
    assert set(state) == set(saved) and all(torch.equal(state[k], saved[k]) for k in saved)
    with torch.no_grad():
        out = teacher(torch.rand(1, 3, 56, 42))
    assert out.shape == (1, 384, 4, 3)


def test_dinov2_tokens_are_ordered_as_released():
    """With every block's layer scale at zero the network is norm(patch embedding + position), so the patch
    features pin down the token order: class token, registers, then patches row by row; registers are not
    features, and the position table of the 37 x 37 grid is used as is at 518 pixels."""
    cfg = DINOV2_CONFIGS["dinov2-vits14-reg"]
    torch.manual_seed(0)
    net = DinoV2(cfg).eval()
    with torch.no_grad():
        for block in net.blocks:
            block.ls1.gamma.zero_()
            block.ls2.gamma.zero_()
        net.register_tokens.normal_()
        images = torch.rand(1, 3, 518, 518)
        out = net(images)
        patches = F.conv2d(net.normalize(images), net.patch_embed.proj.weight, net.patch_embed.proj.bias, stride=14)
        tokens = patches.flatten(2).transpose(1, 2) + net.pos_embed[:, 1:]
        expected = net.norm(tokens).transpose(1, 2).reshape(1, 384, 37, 37)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_a_dinov2_checkpoint_that_does_not_fit_is_named_with_its_keys(tmp_path):
    layout = released_dinov2_layout(384, 12, 0, False)  # the plain model's file given for the register variant
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(_random_state(layout), path)
    with pytest.raises(ManyviewError, match="missing keys: register_tokens") as err:
        load_teacher("dinov2-vits14-reg", weights=path)
    assert str(path) in str(err.value)


def test_absent_dinov2_weights_say_what_to_download_and_where_to_put_it(tmp_path, monkeypatch, vits14_reg_file):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(ManyviewError) as err:
        load_teacher("dinov2-vits14-reg")
    message = str(err.value)
    assert "dinov2_vits14_reg4_pretrain.pth" in message
    assert "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth" in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    with pytest.raises(ManyviewError, match="not found"):
        load_teacher("dinov2-vits14-reg", weights=tmp_path / "nowhere.pth")
    # where torch.hub.load leaves a download, it is found without being named
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / vits14_reg_file.name).symlink_to(vits14_reg_file)
    assert load_teacher("dinov2-vits14-reg").dim == 384


# --------------------------------------------------------------------------------------------- CLIP
def released_clip_visual_layout(width: int, layers: int, patch: int, image: int, out: int) -> dict[str, tuple]:
    """Key -> shape of the image tower of OpenAI CLIP / open_clip ViT checkpoints (under ``visual.``)."""
    grid = image // patch
    keys = {"class_embedding": (width,), "positional_embedding": (1 + grid * grid, width),
            "conv1.weight": (width, 3, patch, patch), "ln_pre.weight": (width,), "ln_pre.bias": (width,),
            "ln_post.weight": (width,), "ln_post.bias": (width,), "proj": (width, out)}
    for i in range(layers):
        b = f"transformer.resblocks.{i}."
        keys.update({b + "ln_1.weight": (width,), b + "ln_1.bias": (width,), b + "ln_2.weight": (width,),
                     b + "ln_2.bias": (width,), b + "attn.in_proj_weight": (3 * width, width),
                     b + "attn.in_proj_bias": (3 * width,), b + "attn.out_proj.weight": (width, width),
                     b + "attn.out_proj.bias": (width,), b + "mlp.c_fc.weight": (4 * width, width),
                     b + "mlp.c_fc.bias": (4 * width,), b + "mlp.c_proj.weight": (width, 4 * width),
                     b + "mlp.c_proj.bias": (width,)})
    return keys


@pytest.mark.parametrize("name,layout", [
    ("clip-vitb32", (768, 12, 32, 224, 512)), ("clip-vitb16", (768, 12, 16, 224, 512)),
    ("clip-vitl14-laion", (1024, 24, 14, 224, 768)),
])
def test_clip_image_towers_have_the_released_layout(name, layout):
    with torch.device("meta"):
        model = ClipVision(CLIP_CONFIGS[name])
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == released_clip_visual_layout(*layout)


def test_a_whole_clip_checkpoint_loads_its_image_tower_strictly(tmp_path):
    cfg = ClipVisionConfig(width=32, layers=2, heads=2, patch_size=8, image_size=32, output_dim=16)
    visual = _random_state(released_clip_visual_layout(32, 2, 8, 32, 16), seed=1)
    text = {"token_embedding.weight": torch.zeros(10, 32), "ln_final.weight": torch.ones(32),
            "text_projection": torch.zeros(32, 16), "logit_scale": torch.tensor(4.6)}
    path = tmp_path / "open_clip_model.safetensors"
    from safetensors.torch import save_file

    save_file({**{f"visual.{k}": v for k, v in visual.items()}, **text}, str(path))
    net = load_clip_vision(path, cfg)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in visual.items())
    with torch.no_grad():
        assert net(torch.rand(2, 3, 48, 32)).shape == (2, 16, 6, 4)
    del visual["proj"]
    save_file({f"visual.{k}": v for k, v in visual.items()}, str(path))
    with pytest.raises(ManyviewError, match="missing keys: proj"):
        load_clip_vision(path, cfg)


def test_absent_clip_weights_say_how_to_get_them():
    with pytest.raises(ManyviewError, match="open_clip"):
        load_teacher("clip-vitb16")


# --------------------------------------------------------------------------------------------- registry
def test_the_fast3r_teacher_is_the_bundled_encoder():
    teacher = load_teacher("fast3r")
    assert (teacher.dim, teacher.stride) == (192, 16)
    with torch.no_grad():
        assert teacher(torch.rand(1, 3, 64, 48)).shape == (1, 192, 4, 3)


def test_unknown_teacher_names_the_choices():
    with pytest.raises(ManyviewError, match="efficientnet-lite0"):
        load_teacher("resnet")
    assert DEFAULT_TEACHER in TEACHERS and not TEACHERS[DEFAULT_TEACHER].needs_download
    assert all(TEACHERS[n].needs_download for n in TEACHERS if n.startswith(("dinov2", "clip")))
