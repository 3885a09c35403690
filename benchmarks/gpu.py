"""Benchmark 6: txt2img throughput and peak VRAM on one GPU, ours vs diffusers (SDPA), eager then torch.compile.

On the GPU machine (about 8 minutes on one H200), from the repository root:

    python benchmarks/gpu.py --out $OUT            # the cuda-marked tests, then every section
    python benchmarks/gpu.py --dry-run --out /tmp/g   # CPU, tiny shapes, 2 steps: what the test suite runs

Sections: SD 1.5-shaped fp16 random weights at 512x512, PLMS 50 steps and ``dpmpp_2m`` 25 steps
(when registered), CFG 7.5, batch 1 and 4; then SDXL-shaped at 1024x1024 the same way; each eager,
then with ``torch.compile`` on both UNets. Both pipelines hold the same tensors (ours is built on
diffusers' weights, renamed), start from the same CPU-seeded noise, and are alternated call by call.
Figures: images per second (median of ``--repeats`` timed calls after one warm-up call; the whole
call, text encoder and VAE decode included, with ``torch.cuda.synchronize``) and peak VRAM
(the pipeline's own weights plus ``torch.cuda.max_memory_allocated`` during the call beyond what was
allocated before it: the two pipelines share tensors, so the raw allocator peak would count both).

diffusers is not installed on the GPU machine: ``--wheels`` (default ``benchmarks/wheels``) holds
wheels carried with the tree (``pip download diffusers==0.42.1 --no-deps -d benchmarks/wheels`` on a
machine with a registry, then ``carry=["benchmarks/wheels"]``); they are installed with
``pip install --no-index --no-deps``, nothing else is. The results go to ``--out`` as ``gpu.json`` and
``gpu.md`` (a Markdown table). A section that would run past ``--budget-s`` is skipped and says so.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def ensure_diffusers(wheels: Path) -> str:
    """Import diffusers, installing the carried wheels (no index, no dependencies) if it is missing."""
    try:
        import diffusers

        return f"diffusers {diffusers.__version__} (already installed)"
    except ImportError:
        pass
    found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if not found:
        raise SystemExit(f"diffusers is not installed and {wheels} holds no wheels; see this script's docstring.")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet", *map(str, found)],
                   check=True)
    import diffusers

    return f"diffusers {diffusers.__version__} (from {', '.join(w.name for w in found)})"


def cuda_tests(budget_s: float) -> dict:
    """``pytest -m cuda`` (the cuda-marked tests), first, as the issue asks."""
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
                               "--no-header", "-o", "addopts=", "tests"], cwd=ROOT, capture_output=True, text=True,
                              timeout=budget_s)
        return {"returncode": done.returncode, "seconds": time.perf_counter() - start,
                "tail": (done.stdout + done.stderr)[-3000:]}
    except subprocess.TimeoutExpired:
        return {"returncode": None, "seconds": budget_s, "tail": f"stopped after {budget_s:.0f} s"}


# --------------------------------------------------------------------------------------------
# the two pipelines on the same weights
# --------------------------------------------------------------------------------------------


def ours_on_their_weights(pipe, family: str):
    """Our ``StableDiffusion`` holding the very tensors of diffusers' ``pipe`` (renamed, not copied)."""
    import torch

    from diffusion_notes.checkpoints import diffusers_layout as layout
    from diffusion_notes.checkpoints.building import place
    from diffusion_notes.models.config import SCALE_FACTORS, TEXT_SPECS
    from diffusion_notes.models.text import PromptEncoder
    from diffusion_notes.models.unet import UNetModel
    from diffusion_notes.models.vae import AutoencoderKL
    from diffusion_notes.stable_diffusion import StableDiffusion, StableDiffusionConfig

    unet_config = layout.unet_config_from_diffusers(dict(pipe.unet.config))
    vae_config = layout.vae_config_from_diffusers(dict(pipe.vae.config))
    with torch.device("meta"):
        unet, vae = UNetModel(unet_config), AutoencoderKL(vae_config)
    unet.load_state_dict(layout.unet_from_diffusers(pipe.unet.state_dict(), unet_config), assign=True)
    vae.load_state_dict(layout.vae_from_diffusers(pipe.vae.state_dict(), vae_config), assign=True)
    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if family == "sdxl" else [])
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
    config = StableDiffusionConfig(family, unet_config, vae_config, "eps", SCALE_FACTORS[family])
    sd = StableDiffusion(config, unet.eval().requires_grad_(False), vae.eval().requires_grad_(False),
                         PromptEncoder(tokenizers, encoders, TEXT_SPECS[family]))
    # as the loaders leave a model: on the CPU, convolutions prepacked for oneDNN (models.prepacked)
    return place(sd, pipe.unet.device, pipe.unet.dtype, prepack=None)


def their_scheduler(pipe, sampler: str):
    """diffusers' counterpart of our sampler, with SD's settings."""
    from diffusers import DPMSolverMultistepScheduler, PNDMScheduler

    if sampler == "plms":
        return PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=True, steps_offset=1,
                                         set_alpha_to_one=False)
    return DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++", solver_order=2)


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------


def weights_gib(modules) -> float:
    """GiB of the distinct tensors (parameters and buffers) held by ``modules``."""
    seen = {}
    for module in modules:
        for tensor in list(module.parameters()) + list(module.buffers()):
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values()) / 2**30


def _timed(run, device) -> tuple[float, float]:
    """(seconds, GiB allocated during the call beyond what was allocated before it) of one call."""
    import torch

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    start = time.perf_counter()
    run()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return seconds, ((torch.cuda.max_memory_allocated() - before) / 2**30 if cuda else float("nan"))


def measure(pipe, sd, family, sampler, steps, batch, side, repeats, device, warmup: int = 1) -> dict:
    """Alternated calls of both pipelines; images/s and peak VRAM of each."""
    import torch

    from diffusion_notes.pipeline import txt2img

    prompt = "a photograph of an astronaut riding a horse"
    pipe.scheduler = their_scheduler(pipe, sampler)
    latent = side // (2 ** (len(sd.config.vae.ch_mult) - 1))

    def x_T():
        return torch.randn(batch, 4, latent, latent, generator=torch.Generator().manual_seed(0))

    def ours():
        txt2img(sd, prompt, steps=steps, sampler=sampler, guidance_scale=7.5, num_images=batch, height=side,
                width=side, latents=x_T(), output="array")

    def theirs():
        pipe(prompt, num_inference_steps=steps, guidance_scale=7.5, num_images_per_prompt=batch, height=side,
             width=side, latents=x_T().to(device, pipe.unet.dtype), output_type="np")

    runs = {"ours": [], "diffusers": []}
    with torch.inference_mode():
        for round_ in range(warmup + repeats):  # the warm-up rounds also compile
            for name, run in (("ours", ours), ("diffusers", theirs)):
                seconds, peak = _timed(run, device)
                if round_ >= warmup:
                    runs[name].append((seconds, peak))
    result = {"family": family, "sampler": sampler, "steps": steps, "batch": batch, "size": side}
    # The two pipelines share tensors (and ours may hold channels-last copies of its convolution
    # weights), so a pipeline's peak is its own weights plus what its call allocated on top.
    own = {"ours": weights_gib([sd]), "diffusers": weights_gib([pipe.unet, pipe.vae, pipe.text_encoder] +
                                                               ([pipe.text_encoder_2] if family == "sdxl" else []))}
    for name, values in runs.items():
        median = statistics.median(s for s, _ in values)
        result[name] = {"images_per_s": batch / median, "seconds": [s for s, _ in values], "weights_gib": own[name],
                        "peak_vram_gib": own[name] + max(p for _, p in values)}
    result["throughput_ratio"] = result["ours"]["images_per_s"] / result["diffusers"]["images_per_s"]
    return result


def sections(dry_run: bool, samplers) -> list[tuple[str, str, int, int, int]]:
    """(family, sampler, steps, batch, side) in the order they run."""
    plans = {family: [("plms", 50), ("dpmpp_2m", 25)] for family in ("sd1", "sdxl")}
    if dry_run:  # each sampler once, to keep the test suite's run short
        plans = {"sd1": [("plms", 2)], "sdxl": [("dpmpp_2m", 2)]}
    sizes = {"sd1": 16 if dry_run else 512, "sdxl": 16 if dry_run else 1024}
    return [(family, s, n, batch, sizes[family]) for family, plan in plans.items() for s, n in plan
            if s in samplers for batch in (1, 4)]


def table(results: list[dict]) -> str:
    from benchmarks.common import table as markdown

    rows = []
    for r in results:
        if "skipped" in r:
            rows.append([r["family"], r["mode"], r["sampler"], r["batch"], "skipped", r["skipped"], "", "", "", ""])
            continue
        o, d = r["ours"], r["diffusers"]
        rows.append([r["family"], r["mode"], f"{r['sampler']} {r['steps']}", r["batch"], f"{o['images_per_s']:.3g}",
                     f"{d['images_per_s']:.3g}", f"{r['throughput_ratio']:.2f}", f"{o['peak_vram_gib']:.2f}",
                     f"{d['peak_vram_gib']:.2f}", f"{r['size']}x{r['size']}"])
    return markdown(["model", "mode", "sampler", "batch", "ours img/s", "diffusers img/s", "ours/diffusers",
                     "ours peak GiB", "diffusers peak GiB", "size"], rows)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true",
                   help="CPU, tiny shapes at 16x16, 2 steps, no warm-up, no compile, no cuda tests")
    p.add_argument("--out", type=Path, default=Path("gpu-results"))
    p.add_argument("--wheels", type=Path, default=ROOT / "benchmarks" / "wheels")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--budget-s", type=float, default=450.0, help="skip sections that would start after this")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--skip-tests", action="store_true")
    args = p.parse_args(argv)
    start = time.perf_counter()
    report = {"diffusers": ensure_diffusers(args.wheels)}

    import torch

    from benchmarks.random_models import diffusers_pipeline
    from diffusion_notes.samplers import SAMPLERS

    device = torch.device("cpu" if args.dry_run else "cuda")
    if not args.dry_run:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device; use --dry-run on a CPU")
        report["device"] = torch.cuda.get_device_name()
        if not args.skip_tests:
            report["cuda_tests"] = cuda_tests(budget_s=120.0)
    report["torch"] = torch.__version__
    dtype = torch.float32 if args.dry_run else torch.float16
    modes = ["eager"] if args.dry_run or args.no_compile else ["eager", "compile"]
    report["results"] = results = []
    missing = [s for s in ("plms", "dpmpp_2m") if s not in SAMPLERS]
    if missing:
        report["note"] = f"not in this package's sampler registry yet, so not measured: {', '.join(missing)}"
    args.out.mkdir(parents=True, exist_ok=True)
    plan = sections(args.dry_run, SAMPLERS)
    for family in ("sd1", "sdxl"):
        with torch.device(device):
            torch.manual_seed(0)
            pipe = diffusers_pipeline(family, not args.dry_run, args.out / f"tok-{family}").to(device, dtype)
        pipe.set_progress_bar_config(disable=True)
        sd = ours_on_their_weights(pipe, family)
        for mode in modes:
            if mode == "compile":
                pipe.unet.compile()
                sd.unet.compile()
            for fam, sampler, steps, batch, side in plan:
                if fam != family:
                    continue
                row = {"family": family, "mode": mode, "sampler": sampler, "steps": steps, "batch": batch}
                if time.perf_counter() - start > args.budget_s:
                    results.append(row | {"skipped": f"past the {args.budget_s:.0f} s budget"})
                    continue
                try:
                    results.append(measure(pipe, sd, family, sampler, steps, batch, side, args.repeats, device,
                                           warmup=0 if args.dry_run else 1) | row)
                except Exception as exc:  # one failing section (e.g. compile) must not lose the others
                    results.append(row | {"skipped": f"{type(exc).__name__}: {str(exc).splitlines()[0][:150]}"})
                (args.out / "gpu.json").write_text(json.dumps(report, indent=1))
        del pipe, sd
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report["seconds"] = time.perf_counter() - start
    (args.out / "gpu.json").write_text(json.dumps(report, indent=1))
    text = table(results)
    (args.out / "gpu.md").write_text(text + "\n")
    print(text)
    return report


if __name__ == "__main__":
    main()
