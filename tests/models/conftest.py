import pytest
import torch


def _perturbed(model, seed=1):
    """Random, non-trivial weights (no LayerNorm at 1, no zero bias) so that every part changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=g)
            p.add_(0.1 * noise if p.dim() == 1 else 0.2 * p.std() * noise)
    return model.eval()


@pytest.fixture(scope="session")
def perturb():
    """``perturb(model, seed=1)``: the model in eval mode with non-trivial random weights."""
    return _perturbed
