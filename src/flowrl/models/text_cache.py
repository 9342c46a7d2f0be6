"""Prompt embeddings computed once, cached on disk, text encoders off the GPU while training.

The text encoders of the real models are large (T5-XXL: 4.7 B parameters, ~9.5 GB in bf16) and
frozen, and a GRPO run sees each prompt many times. So:
- `EmbeddingCache`: one safetensors file per prompt under `<cache_dir>/<model key>/`, the file
  name a hash of the prompt, the model key a hash of the text-encoder configs, the sequence
  length and the dtype (a different model or setting never reads another's embeddings). Writes
  are atomic (several ranks may fill the same cache).
- `PromptEncoder`: prompts -> embeddings through the cache. Only misses reach the encoders,
  which are loaded on first need and released right after every fill, as
  `text_encoders_offload` says:
    cpu    (default) moved to CPU RAM; the next miss moves them back to the GPU for that batch.
    delete freed; the next miss re-loads them from the model directory (seconds for T5-XXL):
           the least memory, for runs whose prompts were all precomputed (`precompute`).
    keep   left on the device (small models, debugging).
  So the GPU holds the transformer and VAE only during rollouts and updates.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

OFFLOAD_MODES = ("cpu", "delete", "keep")


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def model_cache_key(model_dir: str | Path, *settings) -> str:
    """`<dir name>-<12 hex>`: a hash of the text-encoder/tokenizer files and `settings`."""
    model_dir = Path(model_dir)
    h = hashlib.sha256()
    for sub in sorted(p for p in model_dir.iterdir() if p.is_dir() and p.name.startswith(("text_encoder", "tokenizer"))):
        for f in sorted(sub.iterdir()):
            if f.suffix == ".json":
                h.update(f"{sub.name}/{f.name}".encode())
                h.update(f.read_bytes())
            elif f.suffix in (".safetensors", ".bin", ".model"):  # size + first 64 KiB: cheap, tells weights apart
                h.update(f"{sub.name}/{f.name}:{f.stat().st_size}".encode())
                with f.open("rb") as fh:
                    h.update(fh.read(1 << 16))
    h.update(json.dumps([str(s) for s in settings]).encode())
    return f"{model_dir.name}-{h.hexdigest()[:12]}"


class EmbeddingCache:
    """`<root>/<key>/<hash[:2]>/<hash>.safetensors`, one file per prompt, tensors without batch dim."""

    def __init__(self, root: str | Path, key: str):
        self.dir = Path(root).expanduser() / key

    def path(self, prompt: str) -> Path:
        h = prompt_hash(prompt)
        return self.dir / h[:2] / f"{h}.safetensors"

    def get(self, prompt: str) -> dict[str, torch.Tensor] | None:
        from safetensors.torch import load_file

        p = self.path(prompt)
        return load_file(str(p)) if p.is_file() else None

    def put(self, prompt: str, tensors: dict[str, torch.Tensor]) -> Path:
        from safetensors.torch import save_file

        p = self.path(prompt)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f"{p.name}.{os.getpid()}.tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata={"prompt": prompt})
        os.replace(tmp, p)
        return p


class PromptEncoder:
    """Prompts -> dict of batched embedding tensors (CPU), via the cache; see the module doc.

    load() -> encoders (any object with `.to(device)`-able modules: a torch ModuleDict);
    encode(encoders, prompts, device) -> dict of [B, ...] tensors.
    Without a cache (cache=None) results are memoized in memory for the process.
    """

    def __init__(
        self,
        load: Callable[[], torch.nn.Module],
        encode: Callable[[torch.nn.Module, list[str], torch.device], dict[str, torch.Tensor]],
        device: torch.device | str,
        cache: EmbeddingCache | None = None,
        offload: str = "cpu",
        batch_size: int = 16,
    ):
        if offload not in OFFLOAD_MODES:
            raise ValueError(f"text_encoders_offload must be one of {OFFLOAD_MODES}, got {offload!r}")
        self._load, self._encode = load, encode
        self.device = torch.device(device)
        self.cache = cache
        self.offload = offload
        self.batch_size = batch_size
        self.encoders: torch.nn.Module | None = None
        self._memory: dict[str, dict[str, torch.Tensor]] = {}
        self.loads = self.encoded = self.hits = 0  # counters (tests, logs)

    def __call__(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        if not prompts:
            raise ValueError("no prompts to encode")
        found = self._lookup(prompts)
        missing = list(dict.fromkeys(p for p in prompts if p not in found))
        if missing:
            found.update(self._encode_missing(missing))
        self.hits += len(prompts) - len(missing)
        return {k: torch.stack([found[p][k] for p in prompts]) for k in found[prompts[0]]}

    def precompute(self, prompts: list[str]) -> int:
        """Fill the cache for a whole prompt set (e.g. train + val prompts before training), then
        release the encoders. Returns how many prompts were encoded (0 = all cached)."""
        found = self._lookup(list(dict.fromkeys(prompts)))
        missing = list(dict.fromkeys(p for p in prompts if p not in found))
        if missing:
            self._encode_missing(missing, keep=False)
        return len(missing)

    # -- internals -----------------------------------------------------------------------
    def _lookup(self, prompts: list[str]) -> dict[str, dict[str, torch.Tensor]]:
        found = {}
        for p in dict.fromkeys(prompts):
            hit = self.cache.get(p) if self.cache is not None else self._memory.get(p)
            if hit is not None:
                found[p] = hit
        return found

    def _encode_missing(self, missing: list[str], keep: bool = True) -> dict[str, dict[str, torch.Tensor]]:
        encoders = self._acquire()
        out = {}
        try:
            with torch.no_grad():
                for i in range(0, len(missing), self.batch_size):
                    chunk = missing[i : i + self.batch_size]
                    batch = self._encode(encoders, chunk, self.device)
                    for j, p in enumerate(chunk):
                        row = {k: v[j].detach().cpu().clone() for k, v in batch.items()}
                        if self.cache is not None:
                            self.cache.put(p, row)
                        else:
                            self._memory[p] = row
                        if keep:
                            out[p] = row
            self.encoded += len(missing)
        finally:
            self._release()
        return out

    def _acquire(self) -> torch.nn.Module:
        if self.encoders is None:
            self.encoders = self._load()
            self.loads += 1
        return self.encoders.to(self.device)

    def _release(self) -> None:
        if self.offload == "keep" or self.encoders is None:
            return
        if self.offload == "delete":
            self.encoders = None
            _release_memory()
        elif self.device.type != "cpu":
            self.encoders.to("cpu")
            _release_memory()


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
