"""Importing transformers' CLIP on a second thread while the main thread reads the weights.

A loader needs transformers only for the text encoder and the tokenizer, which it builds after reading the
UNet and the autoencoder. Importing ``transformers`` and its CLIP classes takes seconds (it pulls in
``torch._dynamo`` and ``torch.distributed.tensor``; docs/benchmarks.md, benchmark 7), nearly all of it Python
byte code holding the GIL, while reading and converting the weights spends its time in file reads and torch
kernels that release the GIL. :func:`import_in_background` starts the import first, so the two overlap on a
machine with a second core; the loader joins the thread once the weights are read, before anything of its own
imports transformers (measured: about 0.6 s less per load of SD 1.5; docs/benchmarks.md, session 8).

Nothing changes in what is loaded: a failure on the second thread is dropped, and the loader's own import
raises it again where it always did. Counterparts: diffusers imports transformers before it reads anything.
"""

from __future__ import annotations

import importlib
import sys
import threading

__all__ = ["import_in_background", "CLIP_IMPORTS"]

#: The modules a loader imports from transformers (where ``CLIPTextConfig``, ``CLIPTokenizer`` and
#: ``CLIPTextModel`` live); importing them imports ``transformers`` itself first.
CLIP_IMPORTS = ("transformers.models.clip.configuration_clip", "transformers.models.clip.tokenization_clip",
                "transformers.models.clip.modeling_clip")


def _import(names) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # reported by the loader's own import, on the main thread
            return


def import_in_background(names=CLIP_IMPORTS) -> threading.Thread | None:
    """Start importing the modules ``names`` on a daemon thread and return it; None when all of them are
    imported already (nothing to overlap)."""
    if all(name in sys.modules for name in names):
        return None
    thread = threading.Thread(target=_import, args=(tuple(names),), name="diffusion-notes-import", daemon=True)
    thread.start()
    return thread
