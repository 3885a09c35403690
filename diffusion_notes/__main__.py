"""``python -m diffusion_notes <command>``: one entry point, each command in its own module.

Commands are imported lazily so that ``demo`` does not pay for loading transformers.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module, one-line help). Each module defines ``main(argv) -> int``.
COMMANDS = {
    "demo": ("diffusion_notes.demo", "sample a Gaussian mixture with DDPM/DDIM/PLMS and print the error table"),
    "train-toy": ("diffusion_notes.toy.train", "train the class-conditional digits DDPM shipped with the package"),
    "train-mini-sd": ("diffusion_notes.mini_sd.train", "train the miniature Stable Diffusion (digits, 32x32) shipped with the package"),
    "txt2img": ("diffusion_notes.cli", "text-to-image with a Stable Diffusion checkpoint"),
    "img2img": ("diffusion_notes.cli", "image-to-image with a Stable Diffusion checkpoint"),
    "inpaint": ("diffusion_notes.cli", "inpainting with a Stable Diffusion checkpoint"),
    "sweep": ("diffusion_notes.sweep", "run a manifest of jobs (resumable, sharded with torchrun) and measure FD-digits"),
}


def _usage() -> str:
    lines = ["usage: python -m diffusion_notes <command> [options]", "", "commands:"]
    lines += [f"  {name:<13} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`python -m diffusion_notes <command> --help` describes a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name = COMMANDS[command][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("diffusion_notes"):
            print(f"error: the {command!r} command is not available in this version ({exc.name} missing)", file=sys.stderr)
            return 2
        raise
    if module_name == "diffusion_notes.cli":
        return module.main([command, *rest])
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
