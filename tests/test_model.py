"""The DB-VAE and its loss, with one test guarding each of the reference code's five known bugs."""

from __future__ import annotations

import numpy as np
import torch

from debias import DBVAE, ModelConfig, dbvae_loss, preprocess
from debias.encode import encode

CFG = ModelConfig(image_size=16, latent_dim=6, filters=4, hidden=16)


def _batch(b: int = 5, seed: int = 0) -> tuple[DBVAE, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = DBVAE(3, CFG)
    x = torch.rand(b, 3, 16, 16)
    y = torch.arange(b) % 3
    return model, x, y


def test_shapes_and_multiclass() -> None:
    model, x, y = _batch()
    out = model(x)
    assert out.logits.shape == (5, 3) and out.mu.shape == (5, 6) and out.logvar.shape == (5, 6)
    assert out.recon.shape == x.shape and 0 <= out.recon.min() and out.recon.max() <= 1
    probs = model.eval().predict_proba(x)
    assert torch.allclose(probs.sum(1), torch.ones(5))


def test_bug1_vae_mask_applies_to_the_vae_term_only() -> None:
    """Reference bug: the mask multiplied the wrong term. Classification counts on every sample;
    the VAE loss only on masked ones, so an all-zero mask leaves the decoder without gradient."""
    model, x, y = _batch()
    out = model(x)
    none = dbvae_loss(out, x, y, torch.zeros(5), kl_weight=0.1)
    assert torch.allclose(none.total, none.classification.mean())
    none.total.backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.decoder.parameters())

    mask = torch.tensor([1.0, 0, 1, 0, 0])
    out = model(x)
    some = dbvae_loss(out, x, y, mask, kl_weight=0.1)
    vae = some.reconstruction + 0.1 * some.kl
    assert torch.allclose(some.total, (some.classification + mask * vae).mean())
    # Unmasked samples still contribute their classification loss.
    assert some.total > (mask * (some.classification + vae)).mean()


def test_bug2_no_broadcast_of_per_sample_terms() -> None:
    """Reference bug: a (B, 1) mask times a (B,) VAE loss became (B, B), whose mean is
    mean(mask) * mean(vae) instead of mean(mask * vae)."""
    model, x, y = _batch(b=7)
    out = model(x)
    mask = torch.tensor([1.0, 1, 0, 0, 0, 1, 0])
    loss = dbvae_loss(out, x, y, mask, kl_weight=0.5)
    for term in (loss.classification, loss.reconstruction, loss.kl, loss.vae_mask):
        assert term.shape == (7,)
    ce = torch.nn.functional.cross_entropy(out.logits, y, reduction="none")
    vae = (out.recon - x).abs().mean(dim=(1, 2, 3)) + 0.5 * 0.5 * (
        out.logvar.exp() + out.mu**2 - 1 - out.logvar
    ).sum(1)
    expected = (ce + mask * vae).mean()
    broadcast = (ce[:, None] + mask[:, None] * vae[None, :]).mean()
    assert torch.allclose(loss.total, expected)
    assert not torch.allclose(loss.total, broadcast)


def test_bug3_reparameterization_uses_half_logvar_as_log_std() -> None:
    """Reference bug: exp(logvar) used as the std while the KL reads a log-variance."""
    mu = torch.zeros(200_000, 1)
    logvar = torch.full((200_000, 1), float(np.log(4.0)))  # variance 4, std 2
    z = DBVAE.reparameterize(mu, logvar, torch.Generator().manual_seed(0))
    assert abs(z.std().item() - 2.0) < 0.02  # the bug would give std 4


def test_bug4_latent_pass_restores_training_mode() -> None:
    """Reference bug: BatchNorm left in eval mode after computing latents for resampling."""
    model, _, _ = _batch()
    images = np.random.default_rng(0).integers(0, 256, (10, 3, 16, 16), dtype=np.uint8)
    model.train()
    encode(model, images, np.arange(10), device=torch.device("cpu"))
    assert model.training
    assert all(m.training for m in model.modules())
    model.eval()
    encode(model, images, np.arange(10), device=torch.device("cpu"))
    assert not model.training


def test_bug5_latents_use_the_training_preprocessing() -> None:
    """Reference bug: latents for resampling computed on differently preprocessed images.
    The latent pass must give exactly what the encoder gives on the training input."""
    model, _, _ = _batch()
    images = np.random.default_rng(1).integers(0, 256, (10, 3, 16, 16), dtype=np.uint8)
    mu, probs = encode(model, images, np.arange(10), device=torch.device("cpu"))
    model.eval()
    # The training input, computed without preprocess(): uint8 scaled to [0, 1].
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    assert torch.equal(preprocess(torch.from_numpy(images)), x)  # what the training loop feeds
    logits, mu_direct, _ = model.encode(x)
    assert torch.allclose(mu, mu_direct, atol=1e-6)
    assert torch.allclose(probs, torch.softmax(logits, 1), atol=1e-6)


def test_baseline_ignores_the_vae_terms() -> None:
    model, x, y = _batch()
    out = model(x)
    loss = dbvae_loss(out, x, y, torch.ones(5), kl_weight=0.1, use_vae=False)
    assert torch.allclose(loss.total, loss.classification.mean())


def test_l2_reconstruction() -> None:
    model, x, y = _batch()
    out = model(x)
    loss = dbvae_loss(out, x, y, torch.ones(5), kl_weight=0.0, recon="l2")
    assert torch.allclose(loss.reconstruction, (out.recon - x).square().mean(dim=(1, 2, 3)))


def test_decoding_only_the_modelled_images_gives_the_same_loss_and_gradients() -> None:
    model, x, y = _batch(b=6)
    mask = (y == 1).float()  # the VAE models class 1 only
    grads = []
    for decode in (None, mask > 0):
        model.zero_grad()
        out = model(x, torch.Generator().manual_seed(3), decode=decode)
        loss = dbvae_loss(out, x, y, mask, kl_weight=0.01)
        loss.total.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        assert len(out.recon) == (6 if decode is None else 2)
        if decode is None:
            full = loss
    assert torch.allclose(loss.total, full.total)
    assert torch.allclose(loss.reconstruction * mask, full.reconstruction * mask)
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
