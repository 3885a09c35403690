"""The training helpers against independent references.

* the KL term: ``torch.distributions.kl_divergence`` of two ``Normal`` distributions;
* the scale factor: a latent distribution with a known standard deviation (closed form 1/sigma);
* LDM Eq. 2: diffusers' ``DDPMScheduler.add_noise`` (SD's scaled_linear betas) and a plain MSE;
* the trainable text path: gradients reach the CLIP text encoder, and fewer than 77 positions work.
"""

from __future__ import annotations

import pytest
import torch

from diffusion_notes.errors import SettingsError
from diffusion_notes.mini_sd.data import WORDS
from diffusion_notes.models.config import AutoencoderConfig, UNetConfig
from diffusion_notes.models.vae import AutoencoderKL, DiagonalGaussianDistribution
from diffusion_notes.training import (assemble_stable_diffusion, build_text_encoder, build_word_tokenizer,
                                      encode_latents, latent_diffusion_loss, measure_scale_factor, vae_loss)

UNET = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, transformer_depth=(0, 1), context_dim=32,
                  num_heads=2)
VAE = AutoencoderConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1)


def _tiny_sd(tmp_path, max_length=77, scale_factor=0.5):
    torch.manual_seed(0)
    tokenizer = build_word_tokenizer(WORDS, tmp_path / f"tok{max_length}", max_length)
    text = build_text_encoder(tokenizer, 32, 1, 2)
    sd = assemble_stable_diffusion(UNET, AutoencoderKL(VAE), text, tokenizer, scale_factor, native_size=(16, 16))
    with torch.no_grad():  # leave CompVis's zero initialisation, so the UNet's output depends on its inputs
        for p in sd.unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return sd


def test_vae_loss_is_l1_plus_weighted_kl():
    torch.manual_seed(0)
    vae = AutoencoderKL(VAE)
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    loss, rec, kl = vae_loss(vae, x, kl_weight=0.01, generator=torch.Generator().manual_seed(1))
    posterior = vae.encode(x)
    oracle = torch.distributions.kl_divergence(torch.distributions.Normal(posterior.mean, posterior.std),
                                               torch.distributions.Normal(0.0, 1.0)).sum(dim=[1, 2, 3]).mean()
    torch.testing.assert_close(kl, oracle.detach(), rtol=1e-5, atol=1e-5)
    z = posterior.sample(torch.Generator().manual_seed(1))
    torch.testing.assert_close(rec, (vae.decode(z) - x).abs().flatten(1).sum(1).mean().detach())
    torch.testing.assert_close(loss.detach(), rec + 0.01 * kl)


class _KnownLatents:
    """A stand-in encoder: q(z|x) = N(mu, sigma^2) with sigma = 4 everywhere, whatever x is."""

    def encode(self, x):
        mean = torch.full((x.shape[0], 4, 8, 8), 3.0)
        return DiagonalGaussianDistribution(torch.cat([mean, torch.full_like(mean, 2 * torch.log(torch.tensor(4.0)))], 1))


def test_scale_factor_is_one_over_the_latent_std():
    images = torch.zeros(2000, 3, 8, 8)
    factor = measure_scale_factor(_KnownLatents(), images, generator=torch.Generator().manual_seed(0))
    assert factor == pytest.approx(1 / 4, rel=0.01)  # 128k samples: std's relative error ~0.2%


def test_latent_diffusion_loss_matches_diffusers_add_noise(tmp_path):
    from diffusers import DDPMScheduler

    sd = _tiny_sd(tmp_path)
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    z0 = encode_latents(sd, images, torch.Generator().manual_seed(0))
    z_oracle = 0.5 * sd.vae.encode(images).sample(torch.Generator().manual_seed(0))
    torch.testing.assert_close(z0, z_oracle)
    t = torch.tensor([0, 250, 600, 999])
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(2))
    captions = ["a handwritten seven", "the digit 3", "", "nine"]
    loss = latent_diffusion_loss(sd, z0, captions, t=t, noise=noise)

    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    z_t = scheduler.add_noise(z0, noise, t)
    with torch.no_grad():
        context = sd.prompt_encoder(captions)[0]
        oracle = torch.mean((sd.unet(z_t, t, context) - noise) ** 2)
    torch.testing.assert_close(loss.detach(), oracle, rtol=1e-5, atol=1e-6)

    loss.backward()  # the trainable path: LDM Eq. 3 optimises tau_theta with the UNet
    text_grads = [p.grad for p in sd.prompt_encoder.text_encoders[0].parameters() if p.grad is not None]
    assert text_grads and any(g.abs().sum() > 0 for g in text_grads)


def test_fewer_positions_and_no_gradients_at_inference(tmp_path):
    sd = _tiny_sd(tmp_path, max_length=12)
    context, pooled = sd.prompt_encoder(["a handwritten seven", ""])
    assert context.shape == (2, 12, 32) and pooled is None and not context.requires_grad
    assert sd.prompt_encoder.encode(["seven"])[0].requires_grad
    image = sd.txt2img("seven", steps=2, seed=0, output="array").arrays
    assert image.shape == (1, 16, 16, 3)  # the model's native size is the default


def test_assembly_and_widths_are_checked(tmp_path):
    tokenizer = build_word_tokenizer(WORDS, tmp_path / "tok")
    with pytest.raises(ValueError, match="context_dim=32 but the text encoder is 64 wide"):
        assemble_stable_diffusion(UNET, AutoencoderKL(VAE), build_text_encoder(tokenizer, 64, 1, 2), tokenizer, 1.0)
    with pytest.raises(SettingsError, match="multiple of 32") as err:
        UNetConfig(model_channels=48, channel_mult=(1, 2), transformer_depth=(0, 1))
    assert err.value.option == "model_channels"
    with pytest.raises(SettingsError, match="multiple of 32"):
        AutoencoderConfig(ch=16)
    with pytest.raises(SettingsError, match="num_heads") as err:
        UNetConfig(num_heads=-1, num_head_channels=-1)
    assert err.value.option == "num_heads"


def test_fresh_unet_is_zero_initialised_as_compvis(tmp_path):
    tokenizer = build_word_tokenizer(WORDS, tmp_path / "tok")
    sd = assemble_stable_diffusion(UNET, AutoencoderKL(VAE), build_text_encoder(tokenizer, 32, 1, 2), tokenizer, 1.0)
    with torch.no_grad():
        out = sd.unet(torch.randn(2, 4, 8, 8), torch.tensor([3, 700]), torch.randn(2, 77, 32))
    assert torch.equal(out, torch.zeros_like(out))  # every residual branch and the output layer start at zero
