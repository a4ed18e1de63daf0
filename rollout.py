"""Rollouts with HF `generate`, and per-token log-probs and entropy without the (N, V) logits.

An RL step needs, for every completion token t, the policy's log-probability of the sampled token
and the entropy of the whole next-token distribution (the quantity Entropy Scheduling controls):

    logp_t = z_t[y_t] - logsumexp(z_t),     H_t = logsumexp(z_t) - sum_v softmax(z_t)_v z_{t,v}

with z_t = h_t W^T / T the logits (h_t the last hidden state, W the lm_head weight, T the sampling
temperature). One logsumexp serves both: that is the "fused" part. The logits are N x V floats
(32k tokens x 152k vocabulary = 19 GB in fp32), so both entry points go chunk by chunk:

  * `logprobs_and_entropy(logits, labels)` when the logits exist already (rows in fp32 chunks);
  * `fused_logprobs_and_entropy(hidden, weight, labels)` never builds them: a
    torch.autograd.Function whose forward keeps only hidden, weight, labels and two numbers per
    token, and whose backward recomputes each chunk's logits (as verl's FusedLinearForPPO) with

        dL/dz = dlogp * (onehot(y) - p) - dH * p * (log p + H),   then / T.

The logits are multiplied in the precision the sampler's lm_head uses (bf16 on GPUs, fp32 on a
CPU); everything after that matmul is fp32. So the trainer scores the distribution the sampler drew
from, up to kernel differences that `sampler_mismatch` measures. The backward's two matmuls (dL/dz
times W, and dL/dz^T times h) run in that precision too, with fp32 accumulation; dL/dz itself is
built in fp32.

The rest is the policy's side of the RL loop:
  * `load_policy`, `format_prompts`, `stop_token_ids`: any HF causal LM with its tokenizer,
    chat-templated prompts, and every token that ends a turn.
  * `generate_rollouts` samples `group_size` completions per prompt with KV-cached `model.generate`,
    pure temperature / top-p (the checkpoint's own generation_config is set aside), records the
    sampler's log-prob of every token, and returns a `Rollouts` batch whose loss mask keeps each
    completion up to and including its first stop token (never derived from token == pad_id: pad
    is often EOS).
  * `policy_logprobs_and_entropy` runs the policy over such a batch through the fused path, in
    micro-batches, keeping only the final hidden state.

Copyable alone: torch and transformers. Left out: vLLM/SGLang generation (HF generate is slower
but is the same model object that trains, which keeps this file short and exact); lm_heads with a
bias or logit soft-capping (Gemma 2) fall back to full logits.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch


# ----------------------------------------------------------------------------- log-probs and entropy
def logprobs_and_entropy(logits: torch.Tensor, labels: torch.Tensor,
                         chunk_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row log-prob of `labels` and entropy from (N, V) logits, in fp32 row chunks.

    Differentiable through autograd. Only one chunk is upcast to fp32 at a time, which is what
    saves memory for bf16 logits without grad (TRL's `entropy_from_logits` does the same).
    Returns (logp (N,), entropy (N,)) in fp32.
    """
    logps, entropies = [], []
    for start in range(0, logits.shape[0], chunk_size):
        z = logits[start : start + chunk_size].float()  # (n, V)
        logp_all = torch.log_softmax(z, dim=-1)
        logps.append(logp_all.gather(1, labels[start : start + chunk_size, None]).squeeze(1))
        entropies.append(-(logp_all.exp() * logp_all).sum(-1))
    return torch.cat(logps), torch.cat(entropies)


class FusedLinearLogprobEntropy(torch.autograd.Function):
    """logp(label) and entropy from hidden states and the lm_head weight, chunk by chunk.

    Memory: the forward keeps hidden (N, H), weight (V, H), labels and two floats per token; a
    chunk's (chunk_size, V) logits live only inside the loop, in forward and again in backward.
    Compute: the backward recomputes each chunk's logits (one more N x V x H matmul than the
    naive path) in exchange for never holding N x V floats.
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk_size, temperature):
        # hidden (N, H), weight (V, H), labels (N,) -> logp (N,), entropy (N,), both fp32
        device = hidden.device.type
        # The logits are multiplied in the precision the model's own lm_head uses when it samples
        # (bf16 under autocast or FSDP mixed precision, fp32 on a CPU), then everything after the
        # matmul is fp32: the trainer scores the distribution the sampler drew from.
        matmul_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        with torch.autocast(device, enabled=False):
            return FusedLinearLogprobEntropy._forward(ctx, hidden, weight, labels, chunk_size, temperature,
                                                      matmul_dtype)

    @staticmethod
    def _forward(ctx, hidden, weight, labels, chunk_size, temperature, matmul_dtype):
        weight_m = weight.to(matmul_dtype)  # a no-op when the dtypes agree
        n = hidden.shape[0]
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        entropy = torch.empty_like(logp)
        lse = torch.empty_like(logp)
        for start in range(0, n, chunk_size):
            end = min(start + chunk_size, n)
            z = (hidden[start:end].to(matmul_dtype) @ weight_m.T).float()  # (n, V) logits of this chunk
            if temperature != 1.0:
                z.div_(temperature)
            lse_c = torch.logsumexp(z, dim=-1)  # (n,)
            logp[start:end] = z.gather(1, labels[start:end, None]).squeeze(1) - lse_c
            p_times_z = torch.exp(z - lse_c[:, None]).mul_(z)  # (n, V): softmax(z) * z
            entropy[start:end] = lse_c - p_times_z.sum(-1)
            lse[start:end] = lse_c
        ctx.save_for_backward(hidden, weight, labels, lse, entropy)
        ctx.chunk_size, ctx.temperature, ctx.matmul_dtype = chunk_size, temperature, matmul_dtype
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        with torch.autocast(ctx.saved_tensors[0].device.type, enabled=False):
            return FusedLinearLogprobEntropy._backward(ctx, grad_logp, grad_entropy)

    @staticmethod
    def _backward(ctx, grad_logp, grad_entropy):
        hidden, weight, labels, lse, entropy = ctx.saved_tensors
        chunk_size, temperature, matmul_dtype = ctx.chunk_size, ctx.temperature, ctx.matmul_dtype
        # The two (n x V x H) matmuls of the gradients run in bf16 when the logits were multiplied in
        # bf16 (fp32 accumulation inside the matmul, as Liger's fused linear cross-entropy), in fp32
        # otherwise; the softmax and entropy arithmetic that builds dL/dz is fp32 either way. fp16
        # keeps fp32: its narrow exponent would flush the small gradients of dL/dz to zero.
        grad_dtype = torch.bfloat16 if matmul_dtype == torch.bfloat16 else torch.float32
        weight_m, weight_g = weight.to(matmul_dtype), weight.to(grad_dtype)
        grad_logp = torch.zeros_like(lse) if grad_logp is None else grad_logp.float()
        grad_entropy = torch.zeros_like(lse) if grad_entropy is None else grad_entropy.float()
        grad_hidden = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if ctx.needs_input_grad[1] else None  # fp32: the chunks' sum
        for start in range(0, hidden.shape[0], chunk_size):
            end = min(start + chunk_size, hidden.shape[0])
            z = (hidden[start:end].to(matmul_dtype) @ weight_m.T).float()  # (n, V): the forward's logits
            if temperature != 1.0:
                z.div_(temperature)
            log_p = z.sub_(lse[start:end, None])  # (n, V), in place: log softmax
            p = log_p.exp()
            g_logp, g_ent = grad_logp[start:end, None], grad_entropy[start:end, None]
            # dL/dz = g_logp * (onehot - p) - g_ent * p * (log p + H), built in the log_p buffer
            grad_z = log_p.add_(entropy[start:end, None]).mul_(g_ent).add_(g_logp).mul_(p).neg_()
            grad_z.scatter_add_(1, labels[start:end, None], g_logp)
            if temperature != 1.0:
                grad_z.div_(temperature)
            grad_z = grad_z.to(grad_dtype)  # (n, V); a no-op in fp32
            h = hidden[start:end].to(grad_dtype)  # (n, H)
            grad_hidden[start:end] = grad_z @ weight_g  # (n, H)
            if grad_weight is None:
                continue
            if grad_dtype == torch.float32:
                grad_weight.addmm_(grad_z.T, h)  # (V, H)
            else:
                grad_weight.add_(grad_z.T @ h)  # (V, H): a bf16 product, summed in fp32
        grad_weight = None if grad_weight is None else grad_weight.to(weight.dtype)
        return grad_hidden.to(hidden.dtype), grad_weight, None, None, None


def fused_logprobs_and_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                               chunk_size: int = 256,
                               temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(logp (N,), entropy (N,)) in fp32 of the logits `hidden @ weight.T / temperature`,
    without materialising them. hidden (N, H), weight (V, H), labels (N,) int64.

    >>> h, w = torch.randn(3, 4), torch.randn(5, 4)
    >>> logp, ent = fused_logprobs_and_entropy(h, w, torch.tensor([0, 1, 2]), chunk_size=2)
    >>> torch.allclose(logp, torch.log_softmax(h @ w.T, -1)[range(3), [0, 1, 2]], atol=1e-6)
    True
    """
    return FusedLinearLogprobEntropy.apply(hidden, weight, labels, chunk_size, temperature)


# ----------------------------------------------------------------------------- the policy
def resolve_model_path(name_or_path: str) -> str:
    """What `from_pretrained` reads for a --model: a directory as it is; for a pointer file (a
    checkpoint directory's `latest`, which holds the name of the newest `step_N/` beside it) the
    directory it names; a hub name ("org/model") untouched. A path that is plainly local (absolute,
    starting with "." or "~", or with two or more "/") and names no directory raises
    FileNotFoundError "no such directory", before anything asks the hub.

    >>> resolve_model_path("Qwen/Qwen2.5-Math-1.5B")
    'Qwen/Qwen2.5-Math-1.5B'
    """
    import os

    path = os.path.expanduser(name_or_path)
    if os.path.isdir(path):
        return name_or_path
    if os.path.isfile(path):
        with open(path, errors="replace") as f:
            named = f.read(4096).strip()
        target = os.path.join(os.path.dirname(path), named)
        if named and "\n" not in named and os.path.isdir(target):
            return target
        if named and "\n" not in named and len(named) < 256:
            raise FileNotFoundError(f"{name_or_path} names {named!r}, but {target} is no directory")
        raise FileNotFoundError(f"{name_or_path} is a file, not a model directory or a pointer to one")
    local = (os.path.isabs(path) or name_or_path.startswith((".", "~"))
             or name_or_path.count("/") >= 2 or "\\" in name_or_path)
    if local:
        raise FileNotFoundError(f"{name_or_path}: no such directory")
    return name_or_path


class PolicyError(ValueError):
    """A model this code cannot run as asked; the message names the model type and the flag to try."""


def load_policy(name_or_path: str, device: torch.device | None = None, dtype: torch.dtype = torch.float32,
                attn_implementation: str | None = None):
    """Any HF causal LM and its tokenizer, on `device`, ready for left-padded batched generation.

    Training keeps fp32 master weights (bf16 compute comes from autocast or FSDP mixed precision);
    evaluation on a GPU uses bf16. The checkpoint is read in its own dtype, which keeps its
    safetensors memory-mapped (ranks on one host share those pages), and converted to `dtype` on
    `device`: no rank builds a private fp32 copy in host memory on its way to a GPU.
    Attention: see `attention_implementation`; `model.config._attn_implementation` says which runs.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name_or_path = resolve_model_path(name_or_path)  # a checkpoints/latest pointer: its step_N/
    attn = attention_implementation(AutoConfig.from_pretrained(name_or_path), device, attn_implementation)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:  # Llama-style tokenizers have none; the loss mask never uses it
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype="auto",
                                                 **({} if attn is None else {"attn_implementation": attn}))
    return model.to(device=device, dtype=dtype), tokenizer


def load_policy_or_exit(model_flag: str, name_or_path: str, rank: int, **kwargs):
    """`load_policy` for a command line: a model that cannot load as asked (a `PolicyError`, a hub
    name that is not there, no network, a gated model) ends the process with one line on rank 0
    and exit status 2, never a traceback from inside transformers. `model_flag` is what the user
    passed to --model."""
    try:
        return load_policy(name_or_path, **kwargs)
    except PolicyError as e:  # says what to try instead
        message = str(e)
    except OSError as e:
        message = f"--model {model_flag}: {' '.join(str(e).split())}"  # transformers' lines, as one
    if rank == 0:
        print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def attention_implementation(config, device: torch.device, requested: str | None = None) -> str | None:
    """The attention a model of this `config` is loaded with; None: the model's own default.

    `requested` (--attn_implementation) when the model supports it. Otherwise flash-attention 2 on
    a GPU when the model supports it and the flash_attn package is installed, else the model's own
    default (sdpa for most, eager for Gemma 2 and GPT-OSS, whose attention sdpa cannot compute).
    What the model cannot run is a `PolicyError` naming the model type and what to try instead,
    raised before any weight is read.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
    from transformers.utils import is_flash_attn_2_available

    model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    if model_class is None:
        raise PolicyError(f"{config.model_type}: transformers has no causal LM for this model type "
                          f"(AutoModelForCausalLM cannot load it); --model needs a decoder-only LM")
    # FlashAttention 2 itself: models that name other flash kernels (GPT-OSS's attention sinks)
    # would be switched to a kernel downloaded from the hub
    own_kernels = getattr(model_class, "_compatible_flash_implementations", None) or ["flash_attention_2"]
    supported = {"sdpa": model_class._supports_sdpa, "eager": True,
                 "flash_attention_2": model_class._supports_flash_attn and "flash_attention_2" in own_kernels,
                 "flex_attention": model_class._supports_flex_attn}
    flash = supported["flash_attention_2"] and device.type == "cuda" and is_flash_attn_2_available()
    if requested is None:
        return "flash_attention_2" if flash else None
    if requested == "flash_attention_2" and supported[requested] and not flash:
        raise PolicyError("--attn_implementation flash_attention_2 needs a GPU and the flash_attn "
                          "package (pip install flash-attn); try --attn_implementation sdpa")
    if not supported.get(requested, True):  # names we do not know go to transformers as they are
        options = " or ".join(name for name, ok in supported.items() if ok and name != requested)
        raise PolicyError(f"{config.model_type} does not support --attn_implementation {requested}; "
                          f"try --attn_implementation {options}, or leave it unset (the model's own "
                          f"default)")
    return requested


def format_prompts(problems: list[dict], tokenizer, chat_template: str = "auto",
                   system_prompt: str | None = None) -> list[dict]:
    """Problems with "prompt" replaced by the text the model sees (chat template when it has one)."""
    use_template = chat_template == "auto" and getattr(tokenizer, "chat_template", None)
    out = []
    for p in problems:
        text = p["prompt"]
        if use_template:
            messages = ([{"role": "system", "content": system_prompt}] if system_prompt else [])
            messages.append({"role": "user", "content": text})
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        elif system_prompt:
            text = f"{system_prompt}\n\n{text}"
        out.append({**p, "prompt": text})
    return out


def stop_token_ids(tokenizer, model) -> list[int]:
    """Every token that ends a completion: the model's and tokenizer's EOS, and the chat template's
    end-of-turn token (Qwen's <|im_end|>, Llama 3's <|eot_id|>), which is often not an EOS.

    The end-of-turn token is read off the template itself: the first special token it writes after
    an assistant message.
    """
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    if getattr(tokenizer, "chat_template", None):
        sentinel = "\x00ANSWER\x00"
        try:
            text = tokenizer.apply_chat_template([{"role": "user", "content": "1+1"},
                                                  {"role": "assistant", "content": sentinel}], tokenize=False)
        except Exception:  # noqa: BLE001 - a template that cannot render this: EOS alone
            text = ""
        special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items()
                                                    if t.special}
        after = text.split(sentinel, 1)[1] if sentinel in text else ""
        ids += [i for i in tokenizer(after, add_special_tokens=False).input_ids if i in special][:1]
    return list(dict.fromkeys(ids))  # unique, in order


# ----------------------------------------------------------------------------- rollouts
@dataclass
class Rollouts:
    """A batch of completions; the `group_size` completions of a prompt are adjacent rows."""

    prompt_ids: torch.Tensor  # (B, P) left-padded prompt tokens
    completion_ids: torch.Tensor  # (B, T) sampled tokens; rows ended early hold padding after EOS
    prompt_mask: torch.Tensor  # (B, P) 1 on real prompt tokens
    loss_mask: torch.Tensor  # (B, T) 1 up to and including the first stop token
    completions: list[str]  # (B,) decoded completions, special tokens dropped
    sampler_logprobs: torch.Tensor | None = None  # (B, T) log-prob of each token where it was sampled

    @property
    def input_ids(self) -> torch.Tensor:  # (B, P + T)
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:  # (B, P + T)
        return torch.cat([self.prompt_mask, self.loss_mask], dim=1)

    def select(self, rows: torch.Tensor | list[int]) -> "Rollouts":
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.prompt_ids.device)
        return Rollouts(self.prompt_ids[rows], self.completion_ids[rows], self.prompt_mask[rows],
                        self.loss_mask[rows], [self.completions[i] for i in rows.tolist()],
                        None if self.sampler_logprobs is None else self.sampler_logprobs[rows])


def concat_rollouts(parts: list[Rollouts]) -> Rollouts:
    """Stack rollout batches of different widths: prompts re-left-padded, completions right-padded.

    The padding id (0) is never seen: prompt_mask and loss_mask are 0 there.
    """
    P = max(p.prompt_ids.shape[1] for p in parts)
    T = max(p.completion_ids.shape[1] for p in parts)

    def pad(t, width, left):
        extra = width - t.shape[1]
        return torch.nn.functional.pad(t, (extra, 0) if left else (0, extra))

    sampled = None if any(p.sampler_logprobs is None for p in parts) else \
        torch.cat([pad(p.sampler_logprobs, T, False) for p in parts])
    return Rollouts(torch.cat([pad(p.prompt_ids, P, True) for p in parts]),
                    torch.cat([pad(p.completion_ids, T, False) for p in parts]),
                    torch.cat([pad(p.prompt_mask, P, True) for p in parts]),
                    torch.cat([pad(p.loss_mask, T, False) for p in parts]),
                    [c for p in parts for c in p.completions], sampled)


def completion_mask(completion_ids: torch.Tensor, eos_token_id: int | list[int]) -> torch.Tensor:
    """(B, T) mask keeping each row up to and including its first EOS; all of a row without one.

    >>> completion_mask(torch.tensor([[5, 2, 2, 7], [5, 6, 7, 8]]), eos_token_id=2)
    tensor([[1, 1, 0, 0],
            [1, 1, 1, 1]])
    """
    eos = torch.as_tensor(eos_token_id, device=completion_ids.device).flatten()
    is_eos = torch.isin(completion_ids, eos).long()  # (B, T)
    eos_before = is_eos.cumsum(dim=1) - is_eos  # EOS tokens strictly before position t
    return (eos_before == 0).long()


class SampledTokenLogprobs:
    """A logits processor that records log pi_sampler(y_t), the log-prob of each sampled token
    under the very distribution `generate` drew it from.

    Put last in the processor list, it sees the final scores that the sampler soft-maxes. The
    token drawn at step t is known only at step t + 1 (as input_ids[:, -1]), so each call scores
    the previous step's token; `finish` scores the last one.
    """

    def __init__(self):
        self.previous: torch.Tensor | None = None  # (B, V) log-softmax of the last step's scores
        self.logprobs: list[torch.Tensor] = []  # T tensors of shape (B,)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.previous is not None:
            self.logprobs.append(self.previous.gather(1, input_ids[:, -1:]).squeeze(1))
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, completion_ids: torch.Tensor) -> torch.Tensor:  # -> (B, T)
        self.logprobs.append(self.previous.gather(1, completion_ids[:, -1:]).squeeze(1))
        return torch.stack(self.logprobs, dim=1)


@torch.no_grad()
def generate_rollouts(model, tokenizer, prompts: list[str], group_size: int, max_new_tokens: int,
                      temperature: float = 1.0, top_p: float = 1.0,
                      stop_ids: list[int] | None = None) -> Rollouts:
    """Sample `group_size` completions for each prompt with `model.generate` (KV cache on).

    Prompts are tokenized with left padding so that every row's completion starts at the same
    column. Each prompt is prefilled once and its KV cache repeated for its `group_size`
    completions, where the model's cache allows it (`shared_prefill`). Sampling is pure
    temperature / top-p, exactly what the loss assumes: the checkpoint's own generation_config
    (repetition_penalty, top_k, min_p, ... which instruct models often set) is set aside for the
    call. Completions end at any of `stop_ids` (default `stop_token_ids`).
    `synced_gpus=False`: transformers would otherwise all-reduce at every decoding step of an
    FSDP model, and ranks that call `generate` a different number of times would deadlock.
    """
    from transformers import GenerationConfig, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    tokenizer.padding_side = "left"
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    device = next(model.parameters()).device
    unique_ids, unique_mask = encoded["input_ids"].to(device), encoded["attention_mask"].to(device)
    prompt_ids = unique_ids.repeat_interleave(group_size, dim=0)  # (B, P), B = prompts x G
    prompt_mask = unique_mask.repeat_interleave(group_size, dim=0)
    stop_ids = stop_ids or stop_token_ids(tokenizer, model)
    sampling = GenerationConfig(do_sample=True, top_k=0, max_new_tokens=max_new_tokens,
                                eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id)
    recorder = SampledTokenLogprobs()
    processors = LogitsProcessorList([TemperatureLogitsWarper(temperature)] if temperature != 1.0 else [])
    processors += [TopPLogitsWarper(top_p)] if top_p < 1.0 else []
    processors.append(recorder)  # last: it sees the scores the sampler draws from
    own_config, model.generation_config = model.generation_config, sampling  # only ours applies
    try:
        output = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=sampling,
                                logits_processor=processors, synced_gpus=False,
                                **shared_prefill(model, unique_ids, unique_mask, group_size))
    finally:
        model.generation_config = own_config
    completion_ids = output[:, prompt_ids.shape[1] :]  # (B, T), T <= max_new_tokens
    loss_mask = completion_mask(completion_ids, stop_ids)
    texts = tokenizer.batch_decode(completion_ids * loss_mask + tokenizer.pad_token_id * (1 - loss_mask),
                                   skip_special_tokens=True)
    return Rollouts(prompt_ids, completion_ids, prompt_mask, loss_mask, texts, recorder.finish(completion_ids))


def shared_prefill(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, group_size: int) -> dict:
    """The KV cache of each prompt but its last token, computed once and repeated `group_size`
    times, as the keyword argument `generate` continues from ({} when there is nothing to share).

    `generate` would otherwise run the whole prompt through the model once per completion: G times
    the prefill's work. From the cache it runs only the last prompt token, then decodes as before;
    the logits it samples from are the same up to float rounding, and the random draws are the same
    ones (tests/test_architectures.py, family by family). prompt_ids, prompt_mask: (P, L),
    left-padded, one row a prompt.

    Only caches made of `REPEATABLE_CACHE_LAYERS` are shared; for any other model (linear
    attention, convolution and state-space layers, whose states `batch_repeat_interleave` leaves
    unrepeated) this returns {}, `generate` prefills every completion itself, and a note says so
    once per model type.
    """
    import inspect

    from transformers import DynamicCache

    if group_size < 2 or prompt_ids.shape[1] < 2:
        return {}
    cache = DynamicCache(config=model.config.get_text_config(decoder=True))  # as `generate` builds it
    unproven = sorted({type(layer).__name__ for layer in cache.layers} - set(REPEATABLE_CACHE_LAYERS))
    unrepeatable = f"cache layers {', '.join(unproven)}" if unproven else None
    if not model._supports_default_dynamic_cache():  # MiniMax, RWKV, xLSTM
        unrepeatable = "a cache class of its own"
    if unrepeatable:
        note_once(f"note: {model.config.model_type}: {unrepeatable} cannot be repeated across a group; "
                  "each completion prefills its own prompt (plain generate)")
        return {}
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    position_ids = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)  # as `generate` builds them
    model(input_ids=prompt_ids[:, :-1], attention_mask=prompt_mask[:, :-1], position_ids=position_ids[:, :-1],
          use_cache=True, logits_to_keep=1, **{name: cache})
    cache.batch_repeat_interleave(group_size)  # (P, ...) -> (P x G, ...), a prompt's rows adjacent
    return {name: cache}


# Cache layers that hold nothing but keys and values (and a sliding window's token count, one for
# the whole batch), so that repeating the batch rows repeats all they hold. Compared by exact
# class: hybrid layers inherit `batch_repeat_interleave` from these and would repeat only their
# keys and values, not their convolution or recurrent states.
REPEATABLE_CACHE_LAYERS = ("DynamicLayer", "DynamicSlidingWindowLayer")
_NOTED: set[str] = set()


def note_once(message: str) -> None:
    """Print `message` the first time it comes, on the first rank only."""
    import torch.distributed as dist

    if message not in _NOTED and (not dist.is_initialized() or dist.get_rank() == 0):
        print(message, flush=True)
    _NOTED.add(message)


# ----------------------------------------------------------------------------- the policy's view
def sequence_logprobs_and_entropy(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                                  completion_len: int, chunk_size: int = 256,
                                  temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(logp, entropy), each (B, T) fp32, of the last `completion_len` tokens of `input_ids`.

    Runs the whole model (under FSDP the root's forward gathers the embeddings, final norm and
    lm_head) with `logits_to_keep=1`, so its own lm_head computes one position only. A forward
    hook on the decoder keeps its final, normed hidden states, and only those: asking for
    `output_hidden_states` would hold every layer's states alive (tens of GB at 7B). The fused
    head then scores them, with what the model's forward does after its lm_head: a constant scale
    (`LOGIT_SCALES`: Falcon-H1, Granite, Cohere) or Gemma's soft-cap. Position ids come from the
    attention mask, as `generate` builds them. Columns that are padding in every row change
    nothing but the cost: callers cut them off first (`micro_batches` says where).
    """
    captured = {}

    def keep_last_hidden(module, args, output):
        captured["hidden"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, P + T)
    handle = model.base_model.register_forward_hook(keep_last_hidden)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
              logits_to_keep=1, use_cache=False)
    finally:
        handle.remove()
    T = completion_len
    hidden = captured.pop("hidden")[:, -T - 1 : -1, :]  # (B, T, H): states that predict the completion
    labels = input_ids[:, -T:]  # (B, T)
    head = model.get_output_embeddings()
    B, _, H = hidden.shape
    scale = LOGIT_SCALES.get(model.config.model_type, lambda config: 1.0)(model.config)
    if getattr(head, "bias", None) is not None or getattr(model.config, "final_logit_softcapping", None):
        logits = head(hidden) * scale  # (B, T, V)
        if getattr(model.config, "final_logit_softcapping", None):
            cap = model.config.final_logit_softcapping
            logits = torch.tanh(logits / cap) * cap
        logp, entropy = logprobs_and_entropy((logits / temperature).reshape(B * T, -1),
                                             labels.reshape(-1), chunk_size)
    else:
        # (h W^T) s / T = h W^T / (T / s): the scale folds into the temperature
        logp, entropy = fused_logprobs_and_entropy(hidden.reshape(B * T, H), head.weight,
                                                   labels.reshape(-1), chunk_size, temperature / scale)
    return logp.view(B, T), entropy.view(B, T)


# Model type -> the constant its forward multiplies the lm_head's output by (1 for all others).
LOGIT_SCALES = {"falcon_h1": lambda config: config.lm_head_multiplier,
                **dict.fromkeys(("granite", "granitemoe", "granitemoeshared", "granitemoehybrid"),
                                lambda config: 1 / config.logits_scaling),
                **dict.fromkeys(("cohere", "cohere2"), lambda config: config.logit_scale)}


def length_sorted(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) row order, shortest first: micro-batches cut from it hold rows of similar length, so
    that cutting their shared left padding drops most of it. Sums over tokens do not depend on
    row order.

    >>> length_sorted(torch.tensor([[1, 1, 1], [0, 0, 1], [0, 1, 1]])).tolist()
    [1, 2, 0]
    """
    return torch.argsort(attention_mask.sum(dim=1), stable=True)


def micro_batches(attention_mask: torch.Tensor, rows: torch.Tensor,
                  size: int) -> list[tuple[torch.Tensor, int]]:
    """`rows` of a left-padded batch cut into micro-batches of `size` in `length_sorted` order,
    each with its first column that any of its rows uses: `input_ids[rows, first:]` drops the
    padding all of them share. The columns are read from the device once for the whole list, not
    once per micro-batch, so a loop over them never waits for the device.

    >>> mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]])
    >>> [(rows.tolist(), first) for rows, first in micro_batches(mask, torch.arange(3), 2)]
    [([0, 2], 1), ([1], 0)]
    """
    pieces = rows[length_sorted(attention_mask[rows])].split(size)
    firsts = torch.stack([attention_mask[p].any(dim=0).long().argmax() for p in pieces]).tolist()
    return list(zip(pieces, firsts))


@torch.no_grad()
def policy_logprobs_and_entropy(model, rollouts: Rollouts, micro_batch_size: int,
                                chunk_size: int = 256,
                                temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """No-grad (logp, entropy), each (B, T), of a whole rollout batch, micro-batch by micro-batch
    (the "old" log-probs of PPO's ratio and the entropy the controller measures). Rows go
    through as `micro_batches` cuts them (length-sorted, shared padding dropped) and come back in
    their own order."""
    input_ids, attention_mask = rollouts.input_ids, rollouts.attention_mask
    B, T = rollouts.completion_ids.shape
    plan = micro_batches(attention_mask, torch.arange(B, device=input_ids.device), micro_batch_size)
    pieces = [sequence_logprobs_and_entropy(model, input_ids[rows, first:],
                                            attention_mask[rows, first:], T, chunk_size, temperature)
              for rows, first in plan]
    order = torch.cat([rows for rows, _ in plan])  # (B,)
    logp = torch.empty(B, T, device=input_ids.device)  # (B, T) fp32
    entropy = torch.empty_like(logp)
    logp[order] = torch.cat([p[0] for p in pieces])
    entropy[order] = torch.cat([p[1] for p in pieces])
    return logp, entropy


def sampler_mismatch(rollouts: Rollouts, logprobs: torch.Tensor) -> torch.Tensor:
    """(B, T) |logp_sampler - logp_trainer| per completion token, 0 outside the loss mask (verl and
    TRL log its mean). ~1e-7 in fp32 on a CPU; bf16 kernels on GPUs make it larger, and top_p < 1
    adds the mass the sampler cut off (the trainer scores the untruncated distribution). A large
    value means the "on-policy" samples are off-policy.
    """
    return torch.where(rollouts.loss_mask.bool(), (rollouts.sampler_logprobs - logprobs).abs(), 0.0)
