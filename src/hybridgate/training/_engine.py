"""The torch + peft work of training runs, inside a worker process (never the gateway's event loop).

One `Engine` holds one base model and every LoRA adapter trained or sampled on it (peft's named adapters:
the base weights are loaded once, each run has its own adapter and optimizer). The worker process runs its
commands one at a time, in the order they were sent: that is the per-model queue.

Loss (Tinker's cross_entropy): L = sum over datums and positions of -weight * logprob(target). Gradients
add up across forward_backward calls until optim_step applies and clears them, so several calls before
one step give the same update as one large batch.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hybridgate.training._checkpoints import CheckpointFiles


class UserError(Exception):
    """The request is wrong (unknown run, no gradients, a token out of range); category `user`."""


DEFAULT_ALPHA = 32
DEFAULT_MAX_TOKENS = 64
# At most this many logits (padded tokens x vocabulary, float32) per forward pass: 256 MB.
LOGITS_PER_BATCH = 64 * 1024 * 1024


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device is 'cuda' but torch sees no CUDA device (a CPU build of torch?)")
    return device


# For base models whose tokenizer has no chat template: question/answer turns, as the llamacpp backend
# writes them for base models, so messages can be trained on and chatted with all the same.
BASE_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}Question: {{ m['content'] }}\n"
    "{% else %}Answer: {{ m['content'] }}\n\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Answer:{% endif %}"
)
BASE_STOPS = ["\nQuestion:", "\n\n"]


def load_base(path: str, device: str, cache: Path | None = None) -> tuple[Any, Any]:
    """A causal LM and its tokenizer from a local folder or a GGUF file; never the hub.

    A GGUF file is converted once to a model folder under `cache` (keyed by the file's name, size and
    time) and later starts load that: by `_gguf.convert_gguf` for the architectures it covers (the
    packaged Gemma 3, in seconds), else by transformers' own GGUF loader (minutes)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hybridgate.training._gguf import convert_gguf

    p = Path(path)
    if p.is_file():
        kw: dict[str, Any] = {"gguf_file": p.name}
        src = str(p.parent)
        if cache is not None:
            st = p.stat()
            folder = cache / f"{p.stem}-{st.st_size}-{st.st_mtime_ns}"
            if not (folder / "config.json").is_file() and not convert_gguf(p, folder):
                converted: Any = AutoModelForCausalLM.from_pretrained(
                    src, local_files_only=True, dtype=torch.float32, **kw
                )
                # Dequantized to float32 already: drop the GGUF marks, which make transformers refuse to save.
                converted.hf_quantizer = None
                if getattr(converted.config, "quantization_config", None) is not None:
                    del converted.config.quantization_config
                tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
                AutoTokenizer.from_pretrained(src, local_files_only=True, **kw).save_pretrained(tmp)
                converted.save_pretrained(tmp)
                if not folder.exists():
                    os.replace(tmp, folder)
                del converted
            kw, src = {}, str(folder)
    elif p.is_dir():
        kw, src = {}, str(p)
    else:
        raise RuntimeError(f"base model path {path} is neither a folder nor a GGUF file")
    tok = AutoTokenizer.from_pretrained(src, local_files_only=True, **kw)
    model: Any = AutoModelForCausalLM.from_pretrained(src, local_files_only=True, dtype=torch.float32, **kw)
    model.to(device)
    model.eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    return model, tok


def target_modules(model: Any, attn: bool, mlp: bool, unembed: bool) -> list[str]:
    """Full names of the Linear layers LoRA goes on: attention, MLP and/or the output projection."""
    import torch

    names = []
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        low = name.lower()
        if unembed and low.split(".")[-1] in ("lm_head", "embed_out", "output"):
            names.append(name)
        elif attn and ("attn" in low or "attention" in low):
            names.append(name)
        elif mlp and ("mlp" in low or "feed_forward" in low or "ffn" in low):
            names.append(name)
    return names


_LAYER_SETS = {"attn": (True, False, False), "mlp": (False, True, False), "unembed": (False, False, True)}


class _Slot:
    """One run's adapter: its peft name, LoRA settings, optimizer and whether gradients are waiting."""

    def __init__(self, name: str, lora: dict[str, Any]) -> None:
        self.name = name
        self.lora = lora
        self.optimizer: Any = None
        self.grad_tokens = 0


class Engine:
    def __init__(
        self,
        model_name: str,
        path: str,
        device: str,
        files: CheckpointFiles,
        threads: int = 0,
        cache: str | None = None,
    ):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.model_name = model_name
        self.path = path
        self.device = resolve_device(device)
        self.files = files
        self.base, self.tok = load_base(path, self.device, Path(cache) if cache else files.root / "base")
        self.default_stops: list[str] = []
        if not getattr(self.tok, "chat_template", None):
            self.tok.chat_template = BASE_TEMPLATE
            self.default_stops = list(BASE_STOPS)
        self.peft: Any = None
        self.slots: dict[str, _Slot] = {}
        self._made = 0
        # Read before any adapter is injected (afterwards the Linear layers are peft's wrappers).
        self.layers = {k: target_modules(self.base, *flags) for k, flags in _LAYER_SETS.items()}
        tdir = files.tokenizer_dir(model_name)
        if not (tdir / "tokenizer_config.json").exists():
            tdir.parent.mkdir(parents=True, exist_ok=True)
            tmp = tdir.with_name(f".{tdir.name}.{os.getpid()}.tmp")
            self.tok.save_pretrained(tmp)
            os.replace(tmp, tdir) if not tdir.exists() else None
        self.tokenizer_dir = str(tdir)
        cfg = self.base.config
        self.vocab = int(self.base.get_output_embeddings().weight.shape[0])
        self.max_context = int(getattr(cfg, "max_position_embeddings", 0) or 0)
        eos = getattr(getattr(self.base, "generation_config", None), "eos_token_id", None)
        eos = eos if eos is not None else self.tok.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])

    # --- info and adapters -----------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        return {
            "arch": type(self.base).__name__,
            "tokenizer_dir": self.tokenizer_dir,
            "vocab_size": self.vocab,
            "max_context": self.max_context,
            "device": self.device,
            "eos": sorted(self.eos),
            "default_stops": self.default_stops,
        }

    @property
    def model(self) -> Any:
        return self.peft if self.peft is not None else self.base

    def _slot(self, run: str) -> _Slot:
        s = self.slots.get(run)
        if s is None:
            raise UserError(
                f"run {run} has no weights loaded in this worker (was the gateway restarted? load its "
                "last saved state to continue)"
            )
        return s

    def _add(self, run: str, lora: dict[str, Any], seed: int | None) -> _Slot:
        import torch
        from peft import LoraConfig, get_peft_model

        if run in self.slots:
            raise UserError(f"run {run} already exists")
        targets = [n for k, names in self.layers.items() if lora[f"train_{k}"] for n in names]
        if not targets:
            raise UserError("the LoRA config trains nothing: enable train_attn, train_mlp or train_unembed")
        cfg = LoraConfig(
            r=int(lora["rank"]),
            lora_alpha=lora.get("alpha") or DEFAULT_ALPHA,
            lora_dropout=float(lora.get("dropout") or 0.0),
            target_modules=targets,
            bias="none",
            task_type="CAUSAL_LM",
        )
        self._made += 1
        name = f"a{self._made}_" + hashlib.sha1(run.encode()).hexdigest()[:8]
        if seed is not None:
            torch.manual_seed(int(seed))
        if self.peft is None:
            self.peft = get_peft_model(self.base, cfg, adapter_name=name)
        else:
            self.peft.add_adapter(name, cfg)
        slot = _Slot(name, dict(lora))
        self.slots[run] = slot
        self._activate(slot)
        slot.optimizer = torch.optim.AdamW(
            self._params(slot), lr=1e-4, betas=(0.9, 0.95), eps=1e-12, weight_decay=0.0
        )
        return slot

    def _params(self, slot: _Slot) -> list[Any]:
        return [p for n, p in self.peft.named_parameters() if f".{slot.name}." in n]

    def _activate(self, slot: _Slot | None) -> None:
        if slot is not None:
            self.peft.set_adapter(slot.name)

    def create(self, run: str, lora: dict[str, Any], seed: int | None = None) -> dict[str, Any]:
        slot = self._add(run, lora, seed)
        return {"trainable_params": sum(p.numel() for p in self._params(slot))}

    def drop(self, run: str) -> dict[str, Any]:
        slot = self.slots.pop(run, None)
        if slot is not None and self.peft is not None and len(self.peft.peft_config) > 1:
            self.peft.delete_adapter(slot.name)
        return {}

    # --- training --------------------------------------------------------------------------------
    def forward_backward(self, run: str, data: list[dict[str, Any]], forward_only: bool) -> dict[str, Any]:
        """Datums go through the model a few at a time, right-padded into one batch: a step reads the
        weights (Gemma's 262k-row output layer is 670 MB in float32) once per batch, not once per datum.
        Causal attention keeps padding out of every real position, so each datum's logprobs are its own."""
        import torch

        slot = self._slot(run)
        self._activate(slot)
        for i, d in enumerate(data):
            self._check_tokens(d["tokens"], f"data[{i}].tokens")
            self._check_tokens(d["targets"], f"data[{i}].targets")
        model = self.peft
        model.train(not forward_only)
        out_lps: list[list[float]] = []
        loss_sum = 0.0
        tokens = 0
        t0 = time.perf_counter()
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        for chunk in self._chunks(data):
            width = max(len(d["tokens"]) for d in chunk)
            x = torch.full((len(chunk), width), pad, dtype=torch.long)
            y = torch.zeros((len(chunk), width), dtype=torch.long)
            w = torch.zeros((len(chunk), width), dtype=torch.float32)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for b, d in enumerate(chunk):
                n = len(d["tokens"])
                x[b, :n] = torch.tensor(d["tokens"])
                y[b, :n] = torch.tensor(d["targets"])
                w[b, :n] = torch.tensor(d["weights"], dtype=torch.float32)
                mask[b, :n] = 1
            x, y, w, mask = (t.to(self.device) for t in (x, y, w, mask))
            with torch.set_grad_enabled(not forward_only):
                logits = model(input_ids=x, attention_mask=mask).logits.float()
                lp = logits.gather(2, y[..., None])[..., 0] - torch.logsumexp(logits, dim=-1)
                del logits
                loss = -(lp * w).sum()
                if not forward_only:
                    loss.backward()
            lps = lp.detach().cpu()
            for b, d in enumerate(chunk):
                out_lps.append(lps[b, : len(d["tokens"])].tolist())
                tokens += len(d["tokens"])
            loss_sum += float(loss.detach())
        model.eval()
        if not forward_only:
            slot.grad_tokens += tokens
        return {
            "logprobs": out_lps,
            "loss_sum": loss_sum,
            "tokens": tokens,
            "seconds": time.perf_counter() - t0,
            "weight_sum": float(sum(sum(d["weights"]) for d in data)),
        }

    def _chunks(self, data: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
        """Consecutive datums grouped so a batch's logits (padded tokens x vocabulary) stay under
        LOGITS_PER_BATCH floats: memory stays bounded whatever the batch size."""
        chunk: list[dict[str, Any]] = []
        width = 0
        for d in data:
            w = max(width, len(d["tokens"]))
            if chunk and (len(chunk) + 1) * w * self.vocab > LOGITS_PER_BATCH:
                yield chunk
                chunk, w = [], len(d["tokens"])
            chunk.append(d)
            width = w
        if chunk:
            yield chunk

    def _check_tokens(self, ids: list[int], where: str) -> None:
        for t in ids:
            if not 0 <= t < self.vocab:
                raise UserError(f"{where}: token id {t} is outside the vocabulary (0..{self.vocab - 1})")

    def optim_step(self, run: str, adam: dict[str, Any]) -> dict[str, Any]:
        import torch

        slot = self._slot(run)
        if not slot.grad_tokens:
            raise UserError("optim_step with no gradients: call forward_backward first")
        t0 = time.perf_counter()
        params = self._params(slot)
        clip = float(adam.get("grad_clip_norm") or 0.0)
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        for g in slot.optimizer.param_groups:
            g["lr"] = float(adam.get("learning_rate", 1e-4))
            g["betas"] = (float(adam.get("beta1", 0.9)), float(adam.get("beta2", 0.95)))
            g["eps"] = float(adam.get("eps", 1e-12))
            g["weight_decay"] = float(adam.get("weight_decay", 0.0))
        slot.optimizer.step()
        slot.optimizer.zero_grad(set_to_none=True)
        slot.grad_tokens = 0
        return {"grad_norm": float(norm), "seconds": time.perf_counter() - t0}

    # --- checkpoints -----------------------------------------------------------------------------
    def save(
        self, run: str, folder: str, optimizer: bool, meta: dict[str, Any], merged: bool = False
    ) -> dict[str, Any]:
        import torch
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        slot = self._slot(run)

        def fill(d: Path) -> None:
            if merged:
                self._save_merged(slot, d)
                return
            state = get_peft_model_state_dict(self.peft, adapter_name=slot.name, save_embedding_layers=False)
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in state.items()},
                str(d / "adapter_model.safetensors"),
            )
            self.peft.peft_config[slot.name].save_pretrained(str(d))
            if optimizer:
                torch.save(slot.optimizer.state_dict(), d / "optimizer.pt")

        full = {
            **meta,
            "lora": slot.lora,
            "base_model": self.model_name,
            "optimizer": optimizer,
            "merged": merged,
        }
        size = self.files.write(Path(folder), fill, full)
        return {"size_bytes": size, "folder": folder}

    def _save_merged(self, slot: _Slot, d: Path) -> None:
        twin = copy.deepcopy(self.peft)
        merged = twin.merge_and_unload(adapter_names=[slot.name])
        merged.save_pretrained(str(d))
        self.tok.save_pretrained(str(d))
        del twin, merged

    def load(self, run: str, folder: str, optimizer: bool) -> dict[str, Any]:
        """Create adapter `run` from a saved checkpoint folder (with its optimizer state when asked)."""
        import torch
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        path = Path(folder)
        try:
            meta = self.files.meta_at(path)
        except (OSError, ValueError):
            raise UserError(f"no checkpoint at {folder}") from None
        if meta.get("base_model") != self.model_name:
            raise UserError(f"checkpoint is for base model {meta.get('base_model')}, not {self.model_name}")
        if meta.get("merged"):
            raise UserError(
                "a merged checkpoint is a whole model, not an adapter; load an adapter checkpoint"
            )
        if optimizer and not meta.get("optimizer"):
            raise UserError("that checkpoint was saved without optimizer state; load it without optimizer")
        if run in self.slots:
            self.drop(run)
        slot = self._add(run, meta["lora"], None)
        state = load_file(str(path / "adapter_model.safetensors"), device=self.device)
        set_peft_model_state_dict(self.peft, state, adapter_name=slot.name)
        if optimizer:
            slot.optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=self.device))
        return {"lora": meta["lora"]}

    # --- sampling --------------------------------------------------------------------------------
    def _sampling_model(self, run: str | None) -> tuple[Any, Any]:
        """The model to sample from and a context manager: a run's adapter, or the bare base model."""
        import contextlib

        if run is None:
            if self.peft is None:
                return self.base, contextlib.nullcontext()
            return self.peft, self.peft.disable_adapter()
        slot = self._slot(run)
        self._activate(slot)
        return self.peft, contextlib.nullcontext()

    def sample(
        self,
        run: str | None,
        prompt: list[int],
        num_samples: int,
        params: dict[str, Any],
        prompt_logprobs: bool,
    ) -> dict[str, Any]:
        import torch

        self._check_tokens(prompt, "prompt")
        if not prompt:
            raise UserError("prompt: give at least one token")
        model, ctx = self._sampling_model(run)
        t0 = time.perf_counter()
        seqs: list[dict[str, Any]] = []
        plps: list[float] | None = None
        with ctx, torch.no_grad():
            if prompt_logprobs:
                logits = model(input_ids=torch.tensor([prompt], device=self.device)).logits[0].float()
                lp = torch.log_softmax(logits[:-1], dim=-1).gather(
                    1, torch.tensor(prompt[1:], device=self.device)[:, None]
                )[:, 0]
                plps = [math.nan, *lp.cpu().tolist()]
            seed = params.get("seed")
            for k in range(num_samples):
                gen = torch.Generator(device=self.device)
                gen.manual_seed(
                    int(seed) + k if seed is not None else int.from_bytes(os.urandom(4), "little")
                )
                toks: list[int] = []
                lps: list[float] = []
                reason = "length"
                for tok, lp_tok, stop in self._generate(model, prompt, params, gen):
                    toks.append(tok)
                    lps.append(lp_tok)
                    if stop:
                        reason = "stop"
                seqs.append({"tokens": toks, "logprobs": lps, "stop_reason": reason})
        return {
            "sequences": seqs,
            "prompt_logprobs": plps,
            "prompt_tokens": len(prompt),
            "sampled_tokens": sum(len(s["tokens"]) for s in seqs),
            "seconds": time.perf_counter() - t0,
        }

    def _generate(
        self, model: Any, prompt: list[int], params: dict[str, Any], gen: Any
    ) -> Iterator[tuple[int, float, bool]]:
        """Tokens one at a time with a KV cache: (token, its logprob at temperature 1, stopped here)."""
        import torch

        max_tokens = params.get("max_tokens")
        max_tokens = DEFAULT_MAX_TOKENS if max_tokens is None else int(max_tokens)
        t, k, p = params.get("temperature"), params.get("top_k"), params.get("top_p")
        temperature = 1.0 if t is None else float(t)
        top_k = -1 if k is None else int(k)
        top_p = 1.0 if p is None else float(p)
        stop = params.get("stop")
        stop_ids: set[int] = set(self.eos) if stop is None else set()
        stop_strs: list[str] = []
        if isinstance(stop, str):
            stop_strs = [stop]
        elif isinstance(stop, list):
            stop_ids |= {s for s in stop if isinstance(s, int)}
            stop_strs = [s for s in stop if isinstance(s, str) and s]
        out = model(input_ids=torch.tensor([prompt], device=self.device), use_cache=True)
        past = out.past_key_values
        logits = out.logits[0, -1].float()
        made: list[int] = []
        for _ in range(max_tokens):
            logp = torch.log_softmax(logits, dim=-1)
            tok = _pick(logits, temperature, top_k, top_p, gen)
            made.append(tok)
            hit = tok in stop_ids
            if not hit and stop_strs:
                tail = self.tok.decode(made[-16:])
                hit = any(s in tail for s in stop_strs)
            yield tok, float(logp[tok]), hit
            if hit:
                return
            out = model(
                input_ids=torch.tensor([[tok]], device=self.device), past_key_values=past, use_cache=True
            )
            past = out.past_key_values
            logits = out.logits[0, -1].float()

    # --- the JSON API's examples and the served adapter's chat -------------------------------------
    def render(self, examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Examples (chat messages, text, or token ids) as next-token datums with per-target weights."""
        out = []
        for i, ex in enumerate(examples):
            where = f"examples[{i}]"
            if "messages" in ex:
                ids, w = self._render_messages(ex["messages"], where)
            elif "text" in ex:
                ids = list(self.tok(ex["text"])["input_ids"])
                w = [1.0] * len(ids)
            else:
                ids = list(ex["tokens"])
                w = [float(x) for x in ex.get("weights") or [1.0] * len(ids)]
                if len(w) != len(ids):
                    raise UserError(f"{where}.weights: {len(w)} weights for {len(ids)} tokens")
            if len(ids) < 2:
                raise UserError(f"{where}: needs at least 2 tokens to predict one, got {len(ids)}")
            self._check_tokens(ids, f"{where}.tokens")
            if not any(w[1:]):
                raise UserError(f"{where}: no token carries loss (no assistant turn, or all weights zero)")
            out.append({"tokens": ids[:-1], "targets": ids[1:], "weights": w[1:]})
        return out

    def _template(self, messages: list[dict[str, Any]], generation_prompt: bool) -> list[int]:
        ids = self.tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)

    def _render_messages(self, messages: list[dict[str, Any]], where: str) -> tuple[list[int], list[float]]:
        if not getattr(self.tok, "chat_template", None):
            raise UserError(f"{where}.messages: base model {self.model_name} has no chat template; send text")
        full = self._template(messages, False)
        w = [0.0] * len(full)
        for j, m in enumerate(messages):
            if m.get("role") != "assistant":
                continue
            start = len(self._template(messages[:j], True))
            end = len(self._template(messages[: j + 1], False))
            for t in range(start, min(end, len(full))):
                w[t] = 1.0
        return full, w

    def chat_prompt(self, messages: list[dict[str, Any]] | None, text: str | None) -> list[int]:
        if messages is not None:
            if getattr(self.tok, "chat_template", None):
                return self._template(messages, True)
            text = "".join(f"{m.get('role')}: {m.get('content')}\n" for m in messages) + "assistant:"
        return list(self.tok(text or "")["input_ids"])

    def decode(self, seqs: list[list[int]]) -> list[str]:
        return [self.tok.decode(s, skip_special_tokens=True) for s in seqs]

    def stream_text(
        self, run: str | None, prompt: list[int], params: dict[str, Any]
    ) -> Iterator[dict[str, Any]]:
        """Generated text as it comes (for the data plane's served adapters), then the finish reason."""
        import torch

        model, ctx = self._sampling_model(run)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(params.get("seed") or int.from_bytes(os.urandom(4), "little")))
        made: list[int] = []
        shown = ""
        reason = "length"
        with ctx, torch.no_grad():
            stops = [*(params.get("stop_strings") or ()), *self.default_stops]
            for tok, _, stop in self._generate(model, prompt, {**params, "stop": None}, gen):
                if stop:
                    reason = "stop"
                    break
                made.append(tok)
                text = self.tok.decode(made, skip_special_tokens=True)
                if text.endswith("\ufffd"):
                    continue  # half a multi-byte character: wait for the rest
                cut = [text.find(s) for s in stops if s and s in text]
                if cut:
                    text, reason = text[: min(cut)], "stop"
                if len(text) > len(shown):
                    yield {"text": text[len(shown) :]}
                    shown = text
                if cut:
                    break
        yield {"finish_reason": reason, "prompt_tokens": len(prompt), "completion_tokens": len(made)}


def _pick(logits: Any, temperature: float, top_k: int, top_p: float, gen: Any) -> int:
    import torch

    if temperature <= 0:
        return int(torch.argmax(logits))
    x = logits / temperature
    if top_k is not None and top_k > 0 and top_k < x.shape[-1]:
        kth = torch.topk(x, top_k).values[-1]
        x = torch.where(x < kth, torch.full_like(x, -math.inf), x)
    probs = torch.softmax(x, dim=-1)
    if 0 < top_p < 1:
        sp, si = torch.sort(probs, descending=True)
        keep = torch.cumsum(sp, dim=-1) - sp < top_p
        mask = torch.zeros_like(probs, dtype=torch.bool)
        mask[si[keep]] = True
        probs = torch.where(mask, probs, torch.zeros_like(probs))
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=gen))


__all__ = ["DEFAULT_ALPHA", "Engine", "UserError", "load_base", "resolve_device", "target_modules"]
