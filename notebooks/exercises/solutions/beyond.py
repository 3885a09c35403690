"""Solutions to the exercises beyond transcription (notebooks/exercises/07_derive_and_predict and 08_loops_and_bugs).

Kept apart from the exercises, and apart from solutions.py. Each number is derived in the comment above it;
each function is written from the paper, the way a student would write it, without the library's samplers.
``tests/test_exercises_beyond.py`` runs every checker on these.
"""

# --- 07_derive_and_predict ------------------------------------------------------------------

beta_1, beta_2 = 0.1, 0.2

# x_2 = sqrt(1-b2) x_1 + sqrt(b2) e_2 = sqrt((1-b1)(1-b2)) x_0 + sqrt(1-b2) sqrt(b1) e_1 + sqrt(b2) e_2:
# the two independent noises add their variances, (1-b2) b1 + b2 = 1 - (1-b1)(1-b2) = 1 - abar_2.
two_step_variance = 1 - (1 - beta_1) * (1 - beta_2)

# DDPM Eq. 7: beta_tilde_t = (1 - abar_{t-1}) / (1 - abar_t) * beta_t with abar_1 = 1 - b1, abar_2 = (1-b1)(1-b2).
posterior_variance = beta_1 / two_step_variance * beta_2

# x0_hat = (x_t - sqrt(1-abar) eps_hat) / sqrt(abar): an eps error d moves x0_hat by sqrt((1-abar)/abar) d = d / sqrt(SNR).
# The two errors are equal where sqrt(SNR) = 1.
snr_where_errors_equal = 1.0

# sigma^2 = (1 - abar) / abar  =>  abar = 1 / (1 + sigma^2).
sigma = 2.0
alpha_bar_at_sigma = 1 / (1 + sigma**2)

# N - 1 Heun steps of two evaluations, one Euler step to sigma = 0; guidance doubles every evaluation.
N = 25
heun_guided_evaluations = 2 * (2 * N - 1)

# DDIM is Euler's method for dx_bar/dsigma = eps (DDIM Eq. 14): local error O(h^2), N = O(1/h) steps, global error O(h).
ddim_order = 1

# Guidance extrapolates towards what is typical of the class: the judge is surer, the samples more alike.
guidance_effect = {"confidence": "up", "diversity": "down"}


# --- 08_loops_and_bugs ----------------------------------------------------------------------


def ddim_sample(eps_model, x_T, timesteps, alphas_cumprod):
    x = x_T
    for i, t in enumerate(timesteps):
        a_t = float(alphas_cumprod[t])
        a_prev = float(alphas_cumprod[timesteps[i + 1]]) if i + 1 < len(timesteps) else 1.0
        e = eps_model(x, t)
        x0_hat = (x - (1 - a_t) ** 0.5 * e) / a_t**0.5
        x = a_prev**0.5 * x0_hat + (1 - a_prev) ** 0.5 * e
    return x


def heun_sample(denoiser, x_bar_T, sigmas):
    x = x_bar_T
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        d = (x - denoiser(x, sigma)) / sigma
        x_euler = x + (sigma_next - sigma) * d
        if sigma_next == 0:
            x = x_euler
        else:
            d_next = (x_euler - denoiser(x_euler, sigma_next)) / sigma_next
            x = x + (sigma_next - sigma) * (d + d_next) / 2
    return x


def train_step(model, optimizer, x0, t, noise):
    from diffusion_notes.schedules import NoiseSchedule

    a = NoiseSchedule.stable_diffusion().alphas_cumprod[t][:, None]
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    loss = ((model(x_t, t) - noise) ** 2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


# the direction term used sqrt(1 - a_t): it must point to the END of the step, sqrt(1 - a_prev)
buggy_ddim_line = 8
buggy_ddim_fixed = ddim_sample

# the network was fed x_bar; it expects x_t = x_bar / sqrt(sigma^2 + 1)
buggy_euler_line = 4


def buggy_euler_fixed(eps_model, noise, sigmas):
    x_bar = noise * sigmas[0]
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        eps = eps_model(x_bar / (sigma**2 + 1) ** 0.5, sigma)
        x_bar = x_bar + (sigma_next - sigma) * eps
    return x_bar
