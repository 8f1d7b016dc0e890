"""LVSM (Large View Synthesis Model): posed photos -> new views, with no 3D representation in between.

Views become tokens: each input view is patchified from 9 channels ``[2*rgb - 1, o x d, d]`` (image plus
Plücker rays), each target view from its 6 Plücker channels only; there are no positional embeddings, so
all geometry enters through the rays. Two variants share this tokenisation and the output head:

- :class:`LVSMDecoderOnly`: per target view, full self-attention over [all input tokens, target tokens];
- :class:`LVSMEncoderDecoder`: an encoder compresses [learned latents, input tokens] into the latents once,
  a decoder renders each target from [target tokens, latents].

Efficient-LVSM (intra-view input stream + cross-attention, with a KV cache) is in
:mod:`manyview.models.efficient_lvsm`; checkpoints and configs in :mod:`manyview.models.lvsm_weights`.

Module and parameter names follow the official code (Haian-Jin/LVSM), so released state dicts load as they
are. Conventions: images (B, V, 3, H, W) in [0, 1]; ``fxfycxcy`` (B, V, 4) in pixels; ``c2w`` (B, V, 4, 4) OpenCV;
rays through pixel centres (+0.5). The forward applies no pose normalisation: the released models expect
poses passed through :func:`normalize_poses` (over inputs and targets together), as their data loader does.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from einops.layers.torch import Rearrange
from torch import Tensor, nn

from manyview.errors import ManyviewError
from manyview.geometry.rays import pixel_rays, plucker_embedding
from manyview.geometry.transforms import invert_rigid, rigid
from manyview.nn.transformer import TransformerBlock, init_linear_weights, layer_norm
from manyview.scene import Cameras

Variant = Literal["decoder_only", "encoder_decoder", "efficient"]
VARIANT_NAMES = {"decoder_only": "LVSM decoder-only", "encoder_decoder": "LVSM encoder-decoder",
                 "efficient": "Efficient-LVSM"}


@dataclass(frozen=True)
class LVSMConfig:
    """Architecture of one LVSM-family model (the fields the official YAML's ``model`` section sets).

    ``n_layer`` is the depth of the decoder-only transformer and of each Efficient-LVSM stream;
    ``encoder_n_layer`` / ``decoder_n_layer`` / ``n_latent_vectors`` only apply to the encoder-decoder.
    ``image_size`` is the training resolution (renders work at any multiple of ``patch_size``);
    ``scene_scale_factor`` is what :func:`normalize_poses` must be called with for this model.
    """

    variant: Variant = "decoder_only"
    d: int = 768
    d_head: int = 64
    n_layer: int = 24
    encoder_n_layer: int = 12
    decoder_n_layer: int = 12
    n_latent_vectors: int = 3072
    patch_size: int = 8
    image_size: int = 256
    use_qk_norm: bool = True
    special_init: bool = True
    depth_init: bool = True
    scene_scale_factor: float = 1.35

    def __post_init__(self):
        if self.variant not in VARIANT_NAMES:
            raise ManyviewError(f"unknown LVSM variant {self.variant!r}; expected one of {sorted(VARIANT_NAMES)}")
        if self.d % self.d_head:
            raise ManyviewError(f"LVSM width d={self.d} is not a multiple of d_head={self.d_head}")
        if min(self.d, self.d_head, self.patch_size, self.n_layer, self.encoder_n_layer, self.decoder_n_layer,
               self.n_latent_vectors) < 1:
            raise ManyviewError(f"LVSM config has a non-positive size: {self}")

    def describe(self) -> str:
        """One line naming the variant and the sizes that matter for it."""
        depth = (f"{self.encoder_n_layer}+{self.decoder_n_layer} layers, {self.n_latent_vectors} latents"
                 if self.variant == "encoder_decoder" else f"{self.n_layer} layers")
        return f"{VARIANT_NAMES[self.variant]} (d={self.d}, d_head={self.d_head}, {depth}, patch {self.patch_size})"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, path=None) -> "LVSMConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ManyviewError(f"unknown LVSM config fields {unknown}", path)
        return cls(**data)


CONFIGS: dict[str, LVSMConfig] = {
    # published sizes (HF coast01/LVSM and Ayakaee/efficient-lvsm)
    "lvsm-decoder-only": LVSMConfig("decoder_only", n_layer=24),
    "lvsm-decoder-only-512": LVSMConfig("decoder_only", n_layer=24, image_size=512),
    "lvsm-encoder-decoder": LVSMConfig("encoder_decoder", encoder_n_layer=12, decoder_n_layer=12),
    "lvsm-encoder-decoder-512": LVSMConfig("encoder_decoder", encoder_n_layer=12, decoder_n_layer=12,
                                           image_size=512),
    "efficient-lvsm": LVSMConfig("efficient", n_layer=12),
    "efficient-lvsm-512": LVSMConfig("efficient", n_layer=12, image_size=512),
    # small enough to bundle (< 25 MB of float32 weights) and to train on one GPU
    "lvsm-small": LVSMConfig("decoder_only", d=256, d_head=32, n_layer=6),
    "lvsm-encoder-decoder-small": LVSMConfig("encoder_decoder", d=256, d_head=32, encoder_n_layer=3,
                                             decoder_n_layer=3, n_latent_vectors=512),
    "efficient-lvsm-small": LVSMConfig("efficient", d=256, d_head=32, n_layer=3),
    # CPU tests (the sizes of the parity fixtures)
    "lvsm-tiny": LVSMConfig("decoder_only", d=64, d_head=16, n_layer=4, image_size=32),
    "lvsm-encoder-decoder-tiny": LVSMConfig("encoder_decoder", d=64, d_head=16, encoder_n_layer=2,
                                            decoder_n_layer=2, n_latent_vectors=32, image_size=32),
    "efficient-lvsm-tiny": LVSMConfig("efficient", d=64, d_head=16, n_layer=3, image_size=32),
}


def get_config(name: str) -> LVSMConfig:
    if name not in CONFIGS:
        raise ManyviewError(f"unknown LVSM configuration {name!r}; known: {', '.join(CONFIGS)}")
    return CONFIGS[name]


def build_model(config: LVSMConfig | str) -> nn.Module:
    """A freshly initialised model of the variant the config names."""
    config = get_config(config) if isinstance(config, str) else config
    if config.variant == "efficient":
        from manyview.models.efficient_lvsm import EfficientLVSM

        return EfficientLVSM(config)
    return {"decoder_only": LVSMDecoderOnly, "encoder_decoder": LVSMEncoderDecoder}[config.variant](config)


# --------------------------------------------------------------------------------------------- poses
def pose_normalization(c2w: Tensor, scale_factor: float = 1.35) -> tuple[Tensor, Tensor]:
    """The similarity the released LVSM loaders apply to a scene's cameras.

    c2w (..., V, 4, 4) -> (T (..., 4, 4) rigid, scale (...)) such that the normalised pose is
    ``[R_T R | scale * (R_T t + t_T)]``: the world is moved into the frame of the "average camera" (centre =
    mean centre, forward = mean z axis, down = mean y axis, orthonormalised), then shrunk so that the largest
    absolute camera coordinate is 1 / scale_factor. Cameras.transform(T', scale) applies it to other cameras,
    with T' = [R_T | scale * t_T].
    """
    centers = c2w[..., :3, 3]
    forward = F.normalize(c2w[..., :3, 2].mean(-2), dim=-1)
    down = c2w[..., :3, 1].mean(-2)
    right = F.normalize(torch.cross(down, forward, dim=-1), dim=-1)
    down = F.normalize(torch.cross(forward, right, dim=-1), dim=-1)
    avg_c2w = rigid(torch.stack([right, down, forward], dim=-1), centers.mean(-2))
    T = invert_rigid(avg_c2w)
    aligned = (T[..., None, :3, :3] @ centers[..., None])[..., 0] + T[..., None, :3, 3]
    extent = aligned.abs().flatten(-2).amax(-1)
    # a single camera (or all at one point) has no extent: leave its scale alone instead of dividing by 0
    scale = torch.where(extent > 0, 1.0 / (scale_factor * extent.clamp_min(torch.finfo(extent.dtype).tiny)),
                        torch.ones_like(extent))
    return T, scale


def normalize_poses(c2w: Tensor, scale_factor: float = 1.35) -> Tensor:
    """c2w (..., V, 4, 4) of one scene per leading index -> poses as the released loaders feed them.

    Apply it to inputs and targets together (the official loader normalises all views of a sample)."""
    T, scale = pose_normalization(c2w, scale_factor)
    R = T[..., None, :3, :3] @ c2w[..., :3, :3]
    t = ((T[..., None, :3, :3] @ c2w[..., :3, 3:4])[..., 0] + T[..., None, :3, 3]) * scale[..., None, None]
    return rigid(R, t)


def normalize_cameras(cameras: Cameras, scale_factor: float = 1.35) -> Cameras:
    """:func:`normalize_poses` on Cameras (..., V): every camera of a scene, intrinsics untouched."""
    return cameras.with_poses(normalize_poses(cameras.c2w, scale_factor))


# --------------------------------------------------------------------------------------------- rays
def _rays(fxfycxcy: Tensor, c2w: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    # camera geometry stays in the cameras' precision even under autocast (a bf16 R @ d loses ~3 digits)
    if c2w.is_meta or not torch.is_autocast_enabled(c2w.device.type):
        return pixel_rays(fxfycxcy, c2w, height, width, offset=0.5, normalize=True)
    with torch.autocast(c2w.device.type, enabled=False):
        return pixel_rays(fxfycxcy, c2w, height, width, offset=0.5, normalize=True)


def view_rays(fxfycxcy: Tensor, c2w: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Ray origins and unit directions through pixel centres, channels first: each (..., 3, H, W)."""
    o, d = _rays(fxfycxcy, c2w, height, width)
    return o.movedim(-1, -3), d.movedim(-1, -3)


def ray_conditioning(fxfycxcy: Tensor, c2w: Tensor, height: int, width: int) -> Tensor:
    """Plücker [o x d, d] per pixel: (..., 6, H, W)."""
    o, d = _rays(fxfycxcy, c2w, height, width)
    return plucker_embedding(o, d, order="moment_direction").movedim(-1, -3)


def posed_images(images: Tensor, fxfycxcy: Tensor, c2w: Tensor) -> Tensor:
    """Input-view channels [2*rgb - 1, o x d, d]: images (..., 3, H, W) -> (..., 9, H, W)."""
    h, w = images.shape[-2:]
    return torch.cat([images * 2.0 - 1.0, ray_conditioning(fxfycxcy, c2w, h, w).to(images.dtype)], dim=-3)


def patch_tokenizer(in_channels: int, patch_size: int, d: int) -> nn.Sequential:
    """(B, V, C, H, W) -> (B, V, H/p * W/p, d): row-major patches, each flattened (patch row, patch col, channel)."""
    return nn.Sequential(
        Rearrange("b v c (hh ph) (ww pw) -> b v (hh ww) (ph pw c)", ph=patch_size, pw=patch_size),
        nn.Linear(in_channels * patch_size**2, d, bias=False),
    )


# --------------------------------------------------------------------------------------------- checks
def reject(message: str):
    """Bad input to an LVSM-family model (tensors, so no path to name)."""
    raise ManyviewError(message)


def check_views(images: Tensor, fxfycxcy: Tensor, c2w: Tensor, patch_size: int, what: str = "input") -> None:
    """Shapes and values of posed input views; raises ManyviewError naming the problem."""
    if not isinstance(images, Tensor) or images.dim() != 5 or images.shape[2] != 3:
        reject(f"{what} images must be a tensor (B, V, 3, H, W), got "
               f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}")
    b, v, _, h, w = images.shape
    if v == 0 or b == 0:
        reject(f"no {what} views: images have shape {tuple(images.shape)}; LVSM needs at least one posed view")
    check_cameras(fxfycxcy, c2w, (b, v), what)
    check_size(h, w, patch_size, what)
    if not images.is_meta and not torch.isfinite(images).all():
        reject(f"{what} images contain NaN or infinite values")


def check_cameras(fxfycxcy: Tensor, c2w: Tensor, batch: tuple[int, int], what: str) -> None:
    if tuple(fxfycxcy.shape) != batch + (4,) or tuple(c2w.shape) != batch + (4, 4):
        reject(f"{what} cameras do not match the views: expected fxfycxcy {batch + (4,)} and c2w "
               f"{batch + (4, 4)}, got {tuple(fxfycxcy.shape)} and {tuple(c2w.shape)}")
    if batch[1] == 0:
        reject(f"no {what} views given")
    if fxfycxcy.is_meta or c2w.is_meta:
        return
    if not torch.isfinite(c2w).all():
        reject(f"{what} camera poses contain NaN or infinite values")
    if not torch.isfinite(fxfycxcy).all() or not (fxfycxcy[..., :2] > 0).all():
        reject(f"{what} intrinsics must be finite with positive focal lengths")


def check_size(h: int, w: int, patch_size: int, what: str) -> None:
    if h < patch_size or w < patch_size or h % patch_size or w % patch_size:
        reject(f"{what} image size {h}x{w} is not a positive multiple of the patch size {patch_size}")


def camera_image_size(cameras: Cameras, what: str) -> tuple[int, int]:
    """The one (H, W) shared by all cameras, or a ManyviewError."""
    sizes = cameras.image_size.reshape(-1, 2)
    if sizes.shape[0] == 0:
        reject(f"no {what} cameras given")
    if not (sizes == sizes[:1]).all():
        reject(f"{what} cameras have different image sizes {sorted({tuple(s) for s in sizes.tolist()})}; "
               f"render one size per call")
    h, w = (int(x) for x in sizes[0])
    return h, w


def check_camera_batch(cameras: Cameras, batch: int | None, what: str) -> int:
    if not isinstance(cameras, Cameras):
        reject(f"{what} cameras must be a manyview Cameras, got {type(cameras).__name__}")
    if cameras.c2w.dim() != 4:
        reject(f"{what} cameras must have shape (B, V), got {tuple(cameras.shape)}")
    if batch is not None and cameras.shape[0] != batch:
        reject(f"{what} cameras are for {cameras.shape[0]} scenes but the images are for {batch}")
    if cameras.shape[1] == 0:
        reject(f"no {what} views given")
    return cameras.shape[1]


def check_input_cameras(images: Tensor, cameras: Cameras, patch_size: int) -> None:
    if not isinstance(images, Tensor) or images.dim() != 5:
        reject(f"input images must be a tensor (B, V, 3, H, W), got "
               f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}")
    check_camera_batch(cameras, images.shape[0], "input")
    if tuple(cameras.shape) != tuple(images.shape[:2]):
        reject(f"input cameras {tuple(cameras.shape)} do not match the images' (scenes, views) "
               f"{tuple(images.shape[:2])}")
    h, w = camera_image_size(cameras, "input")
    if (h, w) != tuple(images.shape[-2:]):
        reject(f"input cameras are for {h}x{w} images but the images are {images.shape[-2]}x{images.shape[-1]}")


def target_size(cameras: Cameras, batch: int, patch_size: int) -> tuple[int, int]:
    check_camera_batch(cameras, batch, "target")
    h, w = camera_image_size(cameras, "target")
    check_size(h, w, patch_size, "target")
    return h, w


def chunks(n: int, size: int | None) -> Sequence[slice]:
    if size is not None and size < 1:
        reject(f"target_batch_size must be at least 1, got {size}")
    size = n if size is None else size
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


# --------------------------------------------------------------------------------------------- models
class LVSMBase(nn.Module, abc.ABC):
    """Shared tokenisation, output head and user API of the LVSM family.

    Subclasses implement ``render_tokens(inputs (B, Vin, N, d), targets (B, Vt, Nt, d), target_batch_size)``
    -> target tokens (B, Vt, Nt, d).
    """

    variant: Variant
    input_tokenizer_name = "image_tokenizer"  # Efficient-LVSM calls it rgbp_tokenizer
    norm_affine = True  # LVSM LayerNorms keep a scale; Efficient-LVSM's have no parameters

    def __init__(self, config: LVSMConfig):
        super().__init__()
        if config.variant != self.variant:
            raise ManyviewError(f"{type(self).__name__} builds {VARIANT_NAMES[self.variant]} models, but the config "
                                f"is for {VARIANT_NAMES[config.variant]}")
        self.config = config
        p, d = config.patch_size, config.d
        setattr(self, self.input_tokenizer_name, patch_tokenizer(9, p, d))
        self.target_pose_tokenizer = patch_tokenizer(6, p, d)
        self.image_token_decoder = nn.Sequential(layer_norm(d, self.norm_affine), nn.Linear(d, p * p * 3, bias=False),
                                                 nn.Sigmoid())

    @property
    def input_tokenizer(self) -> nn.Module:
        return getattr(self, self.input_tokenizer_name)

    def _block(self) -> TransformerBlock:
        c = self.config
        return TransformerBlock(c.d, c.d_head, qk_norm=c.use_qk_norm, norm_affine=self.norm_affine)

    def _init_blocks(self, blocks: nn.ModuleList) -> None:
        """Official init: std 0.02, shrunk with depth as 0.02 / sqrt(2 (i + 1)) (``depth_init``) or
        0.02 / sqrt(2 n_layers)."""
        for i, block in enumerate(blocks):
            std = 0.02
            if self.config.special_init:
                std = 0.02 / (2 * (i + 1)) ** 0.5 if self.config.depth_init else 0.02 / (2 * len(blocks)) ** 0.5
            init_linear_weights(block, std)

    def _init_io(self) -> None:
        for m in (self.input_tokenizer, self.target_pose_tokenizer, self.image_token_decoder):
            init_linear_weights(m, 0.02)

    # ---------------------------------------------------------------- tokens
    def tokenize_inputs(self, images: Tensor, fxfycxcy: Tensor, c2w: Tensor) -> Tensor:
        """images (B, V, 3, H, W) in [0, 1] -> tokens (B, V, H W / p^2, d)."""
        dtype = self.input_tokenizer[1].weight.dtype
        return self.input_tokenizer(posed_images(images, fxfycxcy, c2w).to(dtype))

    def tokenize_targets(self, fxfycxcy: Tensor, c2w: Tensor, height: int, width: int) -> Tensor:
        """Target cameras (B, V) -> ray tokens (B, V, H W / p^2, d)."""
        dtype = self.target_pose_tokenizer[1].weight.dtype
        return self.target_pose_tokenizer(ray_conditioning(fxfycxcy, c2w, height, width).to(dtype))

    def decode(self, tokens: Tensor, height: int, width: int) -> Tensor:
        """tokens (B, V, N, d) -> RGB (B, V, 3, H, W) in (0, 1)."""
        p = self.config.patch_size
        return rearrange(self.image_token_decoder(tokens), "b v (h w) (p1 p2 c) -> b v c (h p1) (w p2)",
                         h=height // p, w=width // p, p1=p, p2=p, c=3)

    # ---------------------------------------------------------------- raw-tensor API (parity, training)
    def forward(self, images: Tensor, input_fxfycxcy: Tensor, input_c2w: Tensor, target_fxfycxcy: Tensor,
                target_c2w: Tensor, target_size: tuple[int, int] | None = None,
                target_batch_size: int | None = None) -> Tensor:
        """images (B, Vin, 3, H, W), cameras as tensors -> renders (B, Vt, 3, Ht, Wt); (Ht, Wt) default (H, W)."""
        p = self.config.patch_size
        check_views(images, input_fxfycxcy, input_c2w, p)
        b = images.shape[0]
        if target_c2w.dim() != 4:
            reject(f"target c2w must be (B, Vt, 4, 4), got {tuple(target_c2w.shape)}")
        check_cameras(target_fxfycxcy, target_c2w, (b, target_c2w.shape[1]), "target")
        h, w = images.shape[-2:] if target_size is None else target_size
        check_size(h, w, p, "target")
        inputs = self.tokenize_inputs(images, input_fxfycxcy, input_c2w)
        targets = self.tokenize_targets(target_fxfycxcy, target_c2w, h, w)
        return self.decode(self.render_tokens(inputs, targets, target_batch_size), h, w)

    @abc.abstractmethod
    def render_tokens(self, inputs: Tensor, targets: Tensor, target_batch_size: int | None) -> Tensor:
        """inputs (B, Vin, N, d), target ray tokens (B, Vt, Nt, d) -> target tokens (B, Vt, Nt, d)."""

    # ---------------------------------------------------------------- user API
    def render(self, images: Tensor, input_cameras: Cameras, target_cameras: Cameras,
               target_batch_size: int | None = None) -> Tensor:
        """Render new views.

        images (B, Vin, 3, H, W) in [0, 1]; input_cameras Cameras (B, Vin) for (H, W) images; target_cameras
        Cameras (B, Vt), all of one image size (a multiple of the patch size) -> RGB (B, Vt, 3, Ht, Wt).
        Targets are rendered ``target_batch_size`` views at a time (all at once by default): less memory,
        same result. Poses are used as given (see :func:`normalize_poses`).
        """
        check_input_cameras(images, input_cameras, self.config.patch_size)
        h, w = target_size(target_cameras, images.shape[0], self.config.patch_size)
        dtype = images.dtype
        return self(images, input_cameras.fxfycxcy.to(dtype), input_cameras.c2w.to(dtype),
                    target_cameras.fxfycxcy.to(dtype), target_cameras.c2w.to(dtype), (h, w), target_batch_size)


class LVSMDecoderOnly(LVSMBase):
    """Decoder-only LVSM: each target attends jointly with all input tokens (nothing shared across targets)."""

    variant = "decoder_only"

    def __init__(self, config: LVSMConfig = CONFIGS["lvsm-decoder-only"]):
        super().__init__(config)
        self.transformer_blocks = nn.ModuleList([self._block() for _ in range(config.n_layer)])
        self.transformer_input_layernorm = layer_norm(config.d, True)
        self._init_io()
        self._init_blocks(self.transformer_blocks)

    def render_tokens(self, inputs: Tensor, targets: Tensor, target_batch_size: int | None) -> Tensor:
        b, v_in, n, d = inputs.shape
        context = inputs.reshape(b, 1, v_in * n, d)
        out = []
        for sl in chunks(targets.shape[1], target_batch_size):
            t = targets[:, sl]
            c, n_t = t.shape[1], t.shape[2]
            # per target: [all input tokens, this target's tokens]; (B*c, Vin*N + Nt, d)
            x = torch.cat([context.expand(b, c, v_in * n, d), t], dim=2).reshape(b * c, v_in * n + n_t, d)
            x = self.transformer_input_layernorm(x)
            for block in self.transformer_blocks:
                x = block(x)
            out.append(x[:, v_in * n:].reshape(b, c, n_t, d))
        return torch.cat(out, dim=1)


class LVSMEncoderDecoder(LVSMBase):
    """Encoder-decoder LVSM: inputs are compressed once into ``n_latent_vectors`` latent tokens; every target
    is decoded from [its ray tokens, latents]."""

    variant = "encoder_decoder"

    def __init__(self, config: LVSMConfig = CONFIGS["lvsm-encoder-decoder"]):
        super().__init__(config)
        self.n_light_field_latent = nn.Parameter(torch.empty(config.n_latent_vectors, config.d))
        self.transformer_encoder = nn.ModuleList([self._block() for _ in range(config.encoder_n_layer)])
        self.transformer_decoder = nn.ModuleList([self._block() for _ in range(config.decoder_n_layer)])
        self.transformer_input_layernorm_decoder = layer_norm(config.d, True)
        nn.init.trunc_normal_(self.n_light_field_latent, std=0.02)
        self._init_io()
        self._init_blocks(self.transformer_encoder)
        self._init_blocks(self.transformer_decoder)

    def encode_latents(self, inputs: Tensor) -> Tensor:
        """Input tokens (B, Vin, N, d) -> scene latents (B, n_latent_vectors, d)."""
        b, v_in, n, d = inputs.shape
        latents = self.n_light_field_latent.expand(b, -1, -1)
        x = torch.cat([latents, inputs.reshape(b, v_in * n, d)], dim=1)
        for block in self.transformer_encoder:
            x = block(x)
        return x[:, : latents.shape[1]]

    def decode_latents(self, latents: Tensor, targets: Tensor, target_batch_size: int | None = None) -> Tensor:
        """Scene latents (B, L, d) and target ray tokens (B, Vt, Nt, d) -> target tokens (B, Vt, Nt, d)."""
        b, n_lat, d = latents.shape
        out = []
        for sl in chunks(targets.shape[1], target_batch_size):
            t = targets[:, sl]
            c, n_t = t.shape[1], t.shape[2]
            x = torch.cat([t.reshape(b * c, n_t, d), repeat(latents, "b l d -> (b c) l d", c=c)], dim=1)
            x = self.transformer_input_layernorm_decoder(x)
            for block in self.transformer_decoder:
                x = block(x)
            out.append(x[:, :n_t].reshape(b, c, n_t, d))
        return torch.cat(out, dim=1)

    def render_tokens(self, inputs: Tensor, targets: Tensor, target_batch_size: int | None) -> Tensor:
        return self.decode_latents(self.encode_latents(inputs), targets, target_batch_size)


__all__ = ["LVSMConfig", "CONFIGS", "get_config", "build_model", "LVSMBase", "LVSMDecoderOnly",
           "LVSMEncoderDecoder", "normalize_poses", "normalize_cameras", "pose_normalization", "view_rays",
           "ray_conditioning", "posed_images", "patch_tokenizer", "VARIANT_NAMES"]
