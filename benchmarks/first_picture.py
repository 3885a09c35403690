"""Benchmark 7: time to the first picture, the whole process as a user runs it, ours vs diffusers.

    python -m benchmarks.loading make /tmp/sd15                       # the 2 GiB fp16 single file (once)
    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.first_picture run /tmp/sd15 --rounds 3
    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.first_picture miniature --rounds 5

``run``: one fresh Python process per contestant and round, contestants alternated round by round. Each
child imports its library, loads the single file, then either generates one 256x256 picture (20 steps of
DPM++ 2M, guidance 7.5, batch 1, text encoder and VAE decode included; ``--until picture``) or runs one UNet
step at 2x4x32x32 (``--until step``). The parent times the child from ``Popen`` to its exit (interpreter
start-up and imports included) and reads its peak RSS (``ru_maxrss`` from ``os.wait4``); the child reports
its phases. Contestants: ours in fp32, ours in this CPU's default dtype (``diffusion_notes.precision``; bf16
where the CPU has native bf16), diffusers in fp32 (its default).

``miniature``: the miniature's first command, ``python -m diffusion_notes txt2img --prompt "a handwritten
seven"``, against the bare import ``python -c "import torch, transformers; from transformers import
CLIPTextModel"``, fresh processes alternated.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from .loading import FILE

ROOT = Path(__file__).resolve().parents[1]
#: name -> (library, precision)
CONTESTANTS = {"ours fp32": ("ours", "fp32"), "ours default": ("ours", "auto"), "diffusers fp32": ("diffusers", "fp32")}
PROMPT = "a photograph of an astronaut riding a horse"


def one(library: str, precision: str, folder: Path, until: str, side: int, steps: int) -> dict:
    """In this fresh process: import, load, then one picture (or one UNet step); the phases in seconds."""
    start = time.perf_counter()
    import torch

    from diffusion_notes.precision import resolve_dtype

    dtype = resolve_dtype(precision, "cpu")
    if library == "ours":
        from diffusion_notes.pipeline import txt2img
        from diffusion_notes.stable_diffusion import StableDiffusion
    else:
        from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
    phases = {"imports": time.perf_counter() - start}
    mark = time.perf_counter()
    if library == "ours":
        sd = StableDiffusion.from_single_file(folder / FILE, tokenizer=folder / "config", torch_dtype=dtype)
        unet, width = sd.unet, sd.config.unet.context_dim
    else:
        pipe = StableDiffusionPipeline.from_single_file(str(folder / FILE), config=str(folder / "config"),
                                                        local_files_only=True, torch_dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++",
                                                                 solver_order=2)
        unet, width = pipe.unet, pipe.unet.config.cross_attention_dim
    phases["load"] = time.perf_counter() - mark
    mark = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        if until == "step":
            x, c = torch.randn(2, 4, side // 8, side // 8, generator=g), torch.randn(2, 77, width, generator=g)
            t = torch.tensor([981, 981])
            if library == "ours":
                unet(x.to(dtype), t, c.to(dtype))
            else:
                unet(x.to(dtype), t, encoder_hidden_states=c.to(dtype))
            phases["first UNet step"] = time.perf_counter() - mark
        else:
            x_T = torch.randn(1, 4, side // 8, side // 8, generator=g)
            if library == "ours":
                txt2img(sd, PROMPT, steps=steps, sampler="dpmpp_2m", guidance_scale=7.5, height=side, width=side,
                        latents=x_T, output="array")
            else:
                pipe(PROMPT, num_inference_steps=steps, guidance_scale=7.5, height=side, width=side,
                     latents=x_T.to(dtype), output_type="np")
            phases["picture"] = time.perf_counter() - mark
    return {"phases": phases, "dtype": str(dtype).removeprefix("torch.")}


def _spread(values: list[float], digits: str = ".3g") -> str:
    return f"{statistics.median(values):{digits}} ({min(values):{digits}}-{max(values):{digits}})"


def run(folder: Path, rounds: int, names: list[str], until: str, side: int, steps: int, threads: int | None) -> str:
    from .common import table, timed_child_json  # not at the top: a child (`one`) times its own torch import

    results = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            library, precision = CONTESTANTS[name]
            command = [sys.executable, "-m", "benchmarks.first_picture", "one", library, precision, str(folder),
                       "--until", until, "--side", str(side), "--steps", str(steps)]
            if threads:
                command += ["--threads", str(threads)]
            results[name].append(timed_child_json(command))
    reference = results.get("diffusers fp32")
    ref_wall = statistics.median(w for w, _, _ in reference) if reference else None
    ref_rss = statistics.median(r for _, r, _ in reference) if reference else None
    rows = []
    for name in names:
        walls, rsss = [w for w, _, _ in results[name]], [r for _, r, _ in results[name]]
        phases = results[name][0][2]["phases"]
        phase_medians = {k: statistics.median(r[2]["phases"][k] for r in results[name]) for k in phases}
        row = [name, results[name][0][2]["dtype"], _spread(walls), _spread(rsss, ".2f"),
               ", ".join(f"{k} {v:.2f}" for k, v in phase_medians.items())]
        if reference:
            row += [f"{statistics.median(walls) / ref_wall:.2f}", f"{statistics.median(rsss) / ref_rss:.2f}"]
        rows.append(row)
    headers = ["contestant", "weights", "process wall s", "peak RSS GiB", "phases (median s)"]
    if reference:
        headers += ["wall / diffusers fp32", "RSS / diffusers fp32"]
    from .common import machine

    what = (f"one {side}x{side} picture, {steps} steps of DPM++ 2M, CFG 7.5" if until == "picture"
            else f"one UNet step at 2x4x{side // 8}x{side // 8}")
    print(f"Fresh process: imports + load of {(folder / FILE).stat().st_size / 2**30:.2f} GiB fp16 single file + {what}; "
          f"median (min-max) of {rounds} alternated rounds; {machine()}")
    out = table(headers, rows)
    print(out)
    return out


def miniature(rounds: int, prompt: str = "a handwritten seven") -> str:
    """The miniature's first command vs importing torch + transformers' CLIPTextModel, fresh processes."""
    from .common import machine, table, timed_child

    commands = {
        "import torch, transformers, CLIPTextModel": [sys.executable, "-c",
                                                      "import torch, transformers; from transformers import CLIPTextModel"],
        "python -m diffusion_notes txt2img": None,
    }
    walls = {name: [] for name in commands}
    rsss = {name: [] for name in commands}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(rounds):
            commands["python -m diffusion_notes txt2img"] = [
                sys.executable, "-m", "diffusion_notes", "txt2img", "--prompt", prompt, "--outdir", f"{tmp}/{round_}"]
            for name, command in commands.items():
                wall, rss, _ = timed_child(command)
                walls[name].append(wall)
                rsss[name].append(rss)
    base = statistics.median(walls["import torch, transformers, CLIPTextModel"])
    rows = [[name, _spread(walls[name]), f"{statistics.median(walls[name]) - base:+.2f}", _spread(rsss[name], ".2f")]
            for name in commands]
    import torch  # noqa: F401  (for machine())

    print(f"The miniature's first command, fresh processes, median (min-max) of {rounds} alternated rounds; {machine()}")
    out = table(["command", "wall s", "minus the import", "peak RSS GiB"], rows)
    print(out)
    return out


def main(argv=None) -> str | None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="time fresh processes to the first picture (or first UNet step)")
    r.add_argument("folder", type=Path, help="made by `python -m benchmarks.loading make FOLDER`")
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--contestants", nargs="+", default=list(CONTESTANTS), choices=list(CONTESTANTS))
    r.add_argument("--until", choices=["picture", "step"], default="picture")
    r.add_argument("--side", type=int, default=256, help="image side (the UNet step uses side/8 latents)")
    r.add_argument("--steps", type=int, default=20)
    r.add_argument("--threads", type=int, default=None)
    m = sub.add_parser("miniature", help="the miniature's first command against the bare transformers import")
    m.add_argument("--rounds", type=int, default=5)
    o = sub.add_parser("one", help="(internal) one run in this process; prints JSON")
    o.add_argument("library", choices=["ours", "diffusers"])
    o.add_argument("precision")
    o.add_argument("folder", type=Path)
    o.add_argument("--until", choices=["picture", "step"], default="picture")
    o.add_argument("--side", type=int, default=256)
    o.add_argument("--steps", type=int, default=20)
    o.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.command == "run":
        return run(args.folder, args.rounds, args.contestants, args.until, args.side, args.steps, args.threads)
    if args.command == "miniature":
        return miniature(args.rounds)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    print(json.dumps(one(args.library, args.precision, args.folder, args.until, args.side, args.steps)))
    return None


if __name__ == "__main__":
    main()
