import numpy as np
import pytest
import torch

from pc3d.ops.ssim import ssim


def _reference(a: np.ndarray, b: np.ndarray, size: int = 11, sigma: float = 1.5) -> float:
    """Direct per-window SSIM in float64 (every valid window, every channel)."""
    g = np.exp(-((np.arange(size) - (size - 1) / 2) ** 2) / (2 * sigma ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    values = []
    for c in range(a.shape[-1]):
        for i in range(a.shape[0] - size + 1):
            for j in range(a.shape[1] - size + 1):
                x, y = a[i:i + size, j:j + size, c], b[i:i + size, j:j + size, c]
                mx, my = (w * x).sum(), (w * y).sum()
                vx, vy, cxy = (w * x * x).sum() - mx ** 2, (w * y * y).sum() - my ** 2, (w * x * y).sum() - mx * my
                values.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_matches_the_per_window_definition():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, (20, 17, 3))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    got = ssim(torch.from_numpy(a), torch.from_numpy(b))
    assert float(got) == pytest.approx(_reference(a, b), abs=1e-10)
    assert float(ssim(torch.from_numpy(a), torch.from_numpy(a))) == pytest.approx(1.0, abs=1e-12)
    batch = ssim(torch.from_numpy(np.stack([a, a])), torch.from_numpy(np.stack([b, a])))
    assert float(batch) == pytest.approx((_reference(a, b) + 1.0) / 2, abs=1e-10)


def test_ssim_is_differentiable_and_checks_its_input():
    a = torch.rand(16, 16, 3, dtype=torch.float64, requires_grad=True)
    b = torch.rand(16, 16, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: ssim(x, b), (a,))
    with pytest.raises(ValueError, match="smaller than"):
        ssim(torch.rand(8, 8, 3), torch.rand(8, 8, 3))
    with pytest.raises(ValueError, match="one shape"):
        ssim(torch.rand(16, 16, 3), torch.rand(16, 16, 1))
