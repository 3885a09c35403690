"""Exercises of ``notebooks/exercises/04_samplers_training_attention.ipynb``: the DDPM ancestral
step, a PLMS step that keeps its history, one training step, cross-attention (LDM Eq. 3), and
(x0, eps) from (x_t, v)."""

from __future__ import annotations

import torch

from ..forward import predict_eps_from_z_and_v, predict_start_from_z_and_v
from ..losses import p_losses
from ..models.attention import CrossAttention
from ..samplers import adams_bashforth, ddim_step, ddpm_step
from ..schedules import NoiseSchedule
from .cases import at, batch_cases, from_alphas_cumprod, from_betas, gen, z_v_cases
from .harness import F64, Exercise, register


# DDPM ancestral step


def _ddpm_step_cases():
    a = NoiseSchedule.stable_diffusion().alphas_cumprod
    cases = []
    for k, (t, t_prev) in enumerate([(999, 998), (500, 499), (1, 0), (981, 961), (101, 1)]):
        g = gen(400 + k)
        x, e_t, noise = (torch.randn(3, 2, 4, 4, generator=g, dtype=F64) for _ in range(3))
        label = f"t={t} -> {t_prev}" + (" (consecutive)" if t - t_prev == 1 else " (skipping steps)")
        cases.append((label, dict(x=x, e_t=e_t, a_t=float(a[t]), a_prev=float(a[t_prev]), noise=noise)))
    return cases


def _ddpm_variant(x, e_t, a_t, a_prev, noise, variance="posterior", beta_from="step", std=True):
    beta = 1 - a_t / a_prev if beta_from == "step" else 1 - a_t
    pred_x0 = (x - (1 - a_t) ** 0.5 * e_t) / a_t**0.5
    mean = (a_prev**0.5 * beta / (1 - a_t)) * pred_x0 + ((1 - beta) ** 0.5 * (1 - a_prev) / (1 - a_t)) * x
    var = beta * (1 - a_prev) / (1 - a_t) if variance == "posterior" else beta
    return mean + (var**0.5 if std else var) * noise


register(
    Exercise(
        name="ddpm_ancestral_step",
        signature="(x, e_t, a_t, a_prev, noise) -> x_prev",
        reference=lambda x, e_t, a_t, a_prev, noise: ddpm_step(x, e_t, a_t, a_prev, noise, variance="posterior")[0],
        cases=_ddpm_step_cases,
        mistakes=[
            (lambda **kw: _ddpm_variant(**kw, variance="beta"), "the mean is right but you used sigma^2 = beta (DDPM's other choice, fixed_large); this exercise asks for the posterior variance beta_tilde = (1 - a_prev) / (1 - a_t) * beta."),
            (lambda **kw: _ddpm_variant(**kw, std=False), "the noise is scaled by the standard deviation sqrt(beta_tilde), not by the variance."),
            (lambda **kw: _ddpm_variant(**kw, beta_from="abar"), "the step's beta is 1 - a_t / a_prev (one step from a_prev to a_t), not 1 - a_t; they agree only at the first step."),
            (lambda x, e_t, a_t, a_prev, noise: ddpm_step(x, e_t, a_t, a_prev, None)[0], "you returned the posterior mean: add sigma * noise (DDPM Algorithm 2, line 4)."),
        ],
        hint="x0_hat = (x - sqrt(1-a_t) e_t) / sqrt(a_t); beta = 1 - a_t/a_prev; mean = sqrt(a_prev) beta/(1-a_t) x0_hat + sqrt(1-beta)(1-a_prev)/(1-a_t) x (DDPM Eq. 7); x_prev = mean + sqrt((1-a_prev)/(1-a_t) beta) noise.",
    )
)

# PLMS step with its history


def _plms_history_cases():
    a = NoiseSchedule.stable_diffusion().alphas_cumprod
    cases = []
    for k, n_old in enumerate([1, 2, 3, 4]):
        g = gen(500 + k)
        x, e_t = torch.randn(2, 3, 4, generator=g, dtype=F64), torch.randn(2, 3, 4, generator=g, dtype=F64)
        old = [torch.randn(2, 3, 4, generator=g, dtype=F64) for _ in range(n_old)]
        t, t_prev = 801 - 100 * k, 701 - 100 * k
        cases.append((f"{n_old} previous e_t in the history, t={t} -> {t_prev}", dict(x=x, e_t=e_t, old_eps=old, a_t=float(a[t]), a_prev=float(a[t_prev]))))
    return cases


def _plms_history_ref(x, e_t, old_eps, a_t, a_prev):
    x_prev, _ = ddim_step(x, adams_bashforth(e_t, old_eps), a_t, a_prev)
    return x_prev, (list(old_eps) + [e_t])[-3:]


def _plms_history_variant(x, e_t, old_eps, a_t, a_prev, kind):
    if kind == "combined_in_history":
        e_prime = adams_bashforth(e_t, old_eps)
        return ddim_step(x, e_prime, a_t, a_prev)[0], (list(old_eps) + [e_prime])[-3:]
    if kind == "reversed":
        e_prime = adams_bashforth(e_t, list(reversed(old_eps)))
    elif kind == "always_fourth":
        padded = ([old_eps[0]] * 3 + list(old_eps))[-3:]
        e_prime = adams_bashforth(e_t, padded)
    else:  # euler
        e_prime = e_t
    return ddim_step(x, e_prime, a_t, a_prev)[0], (list(old_eps) + [e_t])[-3:]


register(
    Exercise(
        name="plms_step_with_history",
        signature="(x, e_t, old_eps, a_t, a_prev) -> (x_prev, new_old_eps)",
        reference=_plms_history_ref,
        cases=_plms_history_cases,
        mistakes=[
            (lambda **kw: _plms_history_variant(**kw, kind="combined_in_history"), "x_prev is right, but the history must keep the RAW e_t, not the combined e_t' (CompVis appends e_t to old_eps)."),
            (lambda **kw: _plms_history_variant(**kw, kind="reversed"), "old_eps is ordered oldest first: the NEWEST previous estimate is old_eps[-1] (it gets -59/24 in the 4th-order rule)."),
            (lambda **kw: _plms_history_variant(**kw, kind="always_fourth"), "the order depends on the history: 1 previous e_t -> (3 e_t - e_-1)/2, 2 -> (23, -16, 5)/12, 3 or more -> (55, -59, 37, -9)/24."),
            (lambda **kw: _plms_history_variant(**kw, kind="euler"), "that is a plain DDIM step with e_t; combine e_t with the history (Adams-Bashforth) first."),
        ],
        hint="PNDM Eq. 12 (CompVis p_sample_plms): e' from e_t and old_eps[-1], old_eps[-2], old_eps[-3] (newest last); x_prev = sqrt(a_prev) (x - sqrt(1-a_t) e')/sqrt(a_t) + sqrt(1-a_prev) e'; new history = (old_eps + [e_t])[-3:].",
    )
)

# one training step


def _linear_eps_model(params, x, t):
    """A three-parameter stand-in for a network: eps = p0 * x + p1 * t/1000 + p2."""
    return params[0] * x + params[1] * t.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1))) / 1000 + params[2]


def _training_cases():
    cases = []
    for label, c in batch_cases():
        params = torch.tensor([0.3, -0.2, 0.05], dtype=F64)
        cases.append((label, dict(eps_model=_linear_eps_model, params=params, x0=c["x0"], t=c["t"], noise=c["noise"],
                                  alphas_cumprod=from_betas(c["betas"]).alphas_cumprod, lr=0.1)))
    return cases


def _training_variant(eps_model, params, x0, t, noise, alphas_cumprod, lr, target="eps", sign=-1, model_input="x_t"):
    params = params.detach().clone().requires_grad_(True)
    a = at(alphas_cumprod, t)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    prediction = eps_model(params, x_t if model_input == "x_t" else x0, t)
    loss = ((prediction - (noise if target == "eps" else x0)) ** 2).mean()
    (grad,) = torch.autograd.grad(loss, params)
    return loss.detach(), (params + sign * lr * grad).detach()


def _training_ref(eps_model, params, x0, t, noise, alphas_cumprod, lr):
    params = params.detach().clone().requires_grad_(True)
    loss = p_losses(lambda x, tt: eps_model(params, x, tt), x0, t, from_alphas_cumprod(alphas_cumprod), noise=noise)
    (grad,) = torch.autograd.grad(loss, params)
    return loss.detach(), (params - lr * grad).detach()


register(
    Exercise(
        name="training_step",
        signature="(eps_model, params, x0, t, noise, alphas_cumprod, lr) -> (loss, new_params)",
        reference=_training_ref,
        cases=_training_cases,
        mistakes=[
            (lambda **kw: _training_variant(**kw, sign=+1), "the loss is right but you stepped UP the gradient: gradient descent is params - lr * grad."),
            (lambda **kw: _training_variant(**kw, target="x0"), "the regression target is the noise eps (DDPM Eq. 14), not x0."),
            (lambda **kw: _training_variant(**kw, model_input="x0"), "the model must see the noised x_t = sqrt(abar) x0 + sqrt(1-abar) eps, not x0."),
        ],
        hint="DDPM Algorithm 1: x_t = sqrt(abar_t) x0 + sqrt(1-abar_t) noise; loss = mean((eps_model(params, x_t, t) - noise)^2); grad = torch.autograd.grad(loss, params) with params.requires_grad_(); new_params = params - lr * grad.",
    )
)

# cross-attention


def _attention_cases():
    cases = []
    for k, (heads, d_head, n_query, n_context) in enumerate([(1, 8, 5, 3), (2, 4, 6, 7), (4, 2, 4, 77)]):
        g = gen(600 + k)
        inner, context_dim = heads * d_head, 5
        x = torch.randn(2, n_query, inner, generator=g, dtype=F64)
        context = torch.randn(2, n_context, context_dim, generator=g, dtype=F64)
        W_q = torch.randn(inner, inner, generator=g, dtype=F64) / inner**0.5
        W_k = torch.randn(context_dim, inner, generator=g, dtype=F64) / context_dim**0.5
        W_v = torch.randn(context_dim, inner, generator=g, dtype=F64) / context_dim**0.5
        cases.append((f"{heads} head(s) of {d_head}, {n_query} image tokens, {n_context} prompt tokens",
                      dict(x=x, context=context, W_q=W_q, W_k=W_k, W_v=W_v, heads=heads)))
    return cases


def _attention_ref(x, context, W_q, W_k, W_v, heads):
    """The library's CrossAttention with these projections and an identity output projection."""
    inner = W_q.shape[1]
    layer = CrossAttention(query_dim=x.shape[-1], context_dim=context.shape[-1], heads=heads, dim_head=inner // heads).to(F64)
    with torch.no_grad():
        layer.to_q.weight.copy_(W_q.T)
        layer.to_k.weight.copy_(W_k.T)
        layer.to_v.weight.copy_(W_v.T)
        layer.to_out[0].weight.copy_(torch.eye(inner, dtype=F64))
        layer.to_out[0].bias.zero_()
        return layer(x, context)


def _attention_variant(x, context, W_q, W_k, W_v, heads, scale="d_head", axis=-1, split=True):
    q, k, v = x @ W_q, context @ W_k, context @ W_v
    b, n, inner = q.shape
    h = heads if split else 1
    q, k, v = (m.reshape(b, m.shape[1], h, inner // h).transpose(1, 2) for m in (q, k, v))
    d = inner // heads
    factor = {"d_head": d**0.5, "inner": inner**0.5, "d": d, "none": 1.0}[scale]
    weights = torch.softmax(q @ k.transpose(-1, -2) / factor, dim=axis)
    return (weights @ v).transpose(1, 2).reshape(b, n, inner)


register(
    Exercise(
        name="cross_attention",
        signature="(x, context, W_q, W_k, W_v, heads) -> out",
        reference=_attention_ref,
        cases=_attention_cases,
        mistakes=[
            (lambda **kw: _attention_variant(**kw, scale="inner"), "scale by sqrt(d_head), the width of ONE head (inner / heads), not by sqrt of the full width."),
            (lambda **kw: _attention_variant(**kw, scale="d"), "scale by the square root of d_head, not by d_head itself."),
            (lambda **kw: _attention_variant(**kw, scale="none"), "divide the logits Q K^T by sqrt(d_head) before the softmax."),
            (lambda **kw: _attention_variant(**kw, axis=-2), "softmax over the KEYS (the prompt tokens, last axis of Q K^T): each image token's weights over the prompt sum to 1."),
            (lambda **kw: _attention_variant(**kw, split=False, scale="inner"), "split the channels into `heads` heads of d_head = inner / heads, attend in each separately, and concatenate."),
        ],
        hint="LDM Eq. 3: Q = x W_q, K = context W_k, V = context W_v, each (B, N, heads * d) reshaped to (B, heads, N, d); out = softmax(Q K^T / sqrt(d)) V per head, heads concatenated back to (B, N, heads * d).",
    )
)

# the v parameterisation inverted: x0 and eps from (x_t, v)


def _x0_eps_from_v_ref(x_t, t, v, alphas_cumprod):
    s = from_alphas_cumprod(alphas_cumprod)
    return predict_start_from_z_and_v(x_t, t, v, s), predict_eps_from_z_and_v(x_t, t, v, s)


def _x0_eps_variant(x_t, t, v, alphas_cumprod, kind):
    a = at(alphas_cumprod, t)
    x0 = a.sqrt() * x_t - (1 - a).sqrt() * v
    if kind == "eps_sign":
        return x0, a.sqrt() * v - (1 - a).sqrt() * x_t
    if kind == "eps_swapped":
        return x0, (1 - a).sqrt() * v + a.sqrt() * x_t
    return x0, (x_t - a.sqrt() * x0) / (1 - a)  # kind == "variance"


register(
    Exercise(
        name="x0_and_eps_from_v",
        signature="(x_t, t, v, alphas_cumprod) -> (x0, eps)",
        reference=_x0_eps_from_v_ref,
        cases=z_v_cases,
        rtol=1e-5,
        mistakes=[
            (lambda **kw: _x0_eps_variant(**kw, kind="eps_sign"), "x0 is right; for eps both terms are added: eps = sqrt(abar) v + sqrt(1 - abar) x_t."),
            (lambda **kw: _x0_eps_variant(**kw, kind="eps_swapped"), "x0 is right; in eps the coefficients are swapped: v gets sqrt(abar_t), x_t gets sqrt(1 - abar_t)."),
            (lambda **kw: _x0_eps_variant(**kw, kind="variance"), "x0 is right; solving x_t = sqrt(abar) x0 + sqrt(1-abar) eps for eps divides by sqrt(1 - abar), not 1 - abar (or use eps = sqrt(abar) v + sqrt(1-abar) x_t)."),
        ],
        hint="(x_t, v) is (x0, eps) rotated by the angle phi with cos(phi) = sqrt(abar), sin(phi) = sqrt(1-abar): x_t = cos x0 + sin eps, v = cos eps - sin x0. Rotate back: x0 = cos x_t - sin v, eps = sin x_t + cos v.",
    )
)
