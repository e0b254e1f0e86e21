import pytest
import torch

from workers.sample_weights import sample_weights, weighted_loss


def test_strategies_by_hand():
    losses = torch.tensor([1.0, 2.0, 3.0])  # normalised x = [-1, 0, 1]
    lin = sample_weights(losses, "linupper", r=1.0)  # f = [0, 1, 1]
    e = torch.exp(torch.tensor([-1.0, 0.0, 0.0]))
    assert torch.allclose(lin, e / e.sum())
    quad = sample_weights(losses, "quadratic", r=1.0)  # f = [0, 1, 0]: the middle sample counts most
    assert quad.argmax() == 1 and torch.isclose(quad[0], quad[2])
    ext = sample_weights(losses, "extremes", r=1.0)  # f = [1, 0, 1]
    assert ext[1] < ext[0] and torch.isclose(ext[0], ext[2])
    assert torch.allclose(sample_weights(losses, "uniform"), torch.full((3,), 1 / 3))
    assert torch.isclose(lin.sum(), torch.tensor(1.0))


def test_large_temperature_tends_to_uniform_and_no_gradient_through_weights():
    losses = torch.tensor([1.0, 5.0, 9.0], requires_grad=True)
    w = sample_weights(losses, "linupper", r=1e6)
    assert torch.allclose(w, torch.full((3,), 1 / 3), atol=1e-5) and not w.requires_grad
    loss = weighted_loss(losses, {"kind": "linupper", "r": 0.5}, step=10)
    loss.backward()
    assert torch.allclose(losses.grad, sample_weights(losses, "linupper", 0.5))


def test_burn_in_and_unknown():
    losses = torch.tensor([1.0, 3.0])
    assert weighted_loss(losses, {"kind": "extremes", "burn_in": 5}, step=2) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="valid: uniform, linupper"):
        sample_weights(losses, "mid")
