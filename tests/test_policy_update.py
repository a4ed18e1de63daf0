"""The update step as a user's model meets it: loaded with `from_pretrained` (which returns it in
evaluation mode), with gradient checkpointing, without dropout, and without waiting on the device."""
import collections
import os
import random
import traceback

import pytest
import torch

import train
from loss import policy_loss
from reward import math_reward
from rollout import Rollouts, completion_mask

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def saved_policy(path, **config):
    """tests/tiny.py's policy with `config` changed, written with save_pretrained (as a hub
    checkpoint is) so that train.setup loads it with from_pretrained."""
    from tiny import tiny_policy

    model, tokenizer = tiny_policy()
    for key, value in config.items():
        setattr(model.config, key, value)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def setup_run(model_path, out_dir, **fields):
    cfg = train.Config(model=model_path, out_dir=str(out_dir), prompts_per_step=4, group_size=2,
                       max_new_tokens=3, updates_per_step=2, micro_batch_size=1, steps=1,
                       dynamic_sampling=False, **fields).resolved()
    run, _ = train.setup(cfg, math_reward, "builtin", 0, 1, torch.device("cpu"))
    return run


@pytest.mark.parametrize("checkpointing", [False, True])
def test_gradient_checkpointing_recomputes_every_layer_of_a_loaded_model(tmp_path, checkpointing):
    """One RL step of train.py on a model loaded from disk. With the flag, every decoder layer of
    every update micro-batch goes through the checkpoint and runs its forward a second time in
    backward; without it, once. (A model fresh from from_pretrained is in evaluation mode, in
    which transformers' layers do not checkpoint.)"""
    run = setup_run(saved_policy(tmp_path / "model"), tmp_path / "run",
                    gradient_checkpointing=checkpointing)
    layers = run.model.model.layers
    forwards_with_grad, checkpointed = [0], [0]
    for layer in layers:
        def counted_forward(*args, forward=layer.mlp.forward, **kwargs):  # runs in recomputes too
            forwards_with_grad[0] += torch.is_grad_enabled()  # (module hooks do not)
            return forward(*args, **kwargs)

        layer.mlp.forward = counted_forward
        if checkpointing:
            through = layer._gradient_checkpointing_func

            def counted(*args, through=through, **kwargs):
                checkpointed[0] += 1
                return through(*args, **kwargs)

            layer._gradient_checkpointing_func = counted
    train.rl_step(run, 0)
    micro_batches = 8  # 4 prompts x 2 completions, one sequence a micro-batch
    assert checkpointed[0] == (len(layers) * micro_batches if checkpointing else 0)
    assert forwards_with_grad[0] == len(layers) * micro_batches * (2 if checkpointing else 1)


def test_dropout_is_off_so_the_update_scores_what_the_old_policy_measured(tmp_path):
    """A checkpoint that asks for attention dropout 0.5. The update runs in training mode (which
    checkpointing needs) and the old log-probs in evaluation mode; with dropout switched off
    both are one function, so before its first optimizer step the update's log-probs equal the
    old ones and the ratio is exactly 1."""
    run = setup_run(saved_policy(tmp_path / "model", attention_dropout=0.5), tmp_path / "run",
                    gradient_checkpointing=True)
    assert run.model.config.attention_dropout == 0.0
    assert all(layer.self_attn.attention_dropout == 0.0 for layer in run.model.model.layers)
    seen = []

    def recording_loss(logprobs, old_logprobs, *args, **kwargs):
        seen.append((logprobs.detach(), old_logprobs))
        return policy_loss(logprobs, old_logprobs, *args, **kwargs)

    original, train.policy_loss = train.policy_loss, recording_loss
    try:
        train.rl_step(run, 0)
    finally:
        train.policy_loss = original
    first_update = seen[:4]  # 8 sequences, 2 mini-batches of 4, micro-batches of 1
    for logprobs, old in first_update:
        torch.testing.assert_close(logprobs, old, rtol=0, atol=1e-6)


def test_disable_dropout_reaches_dropout_modules_and_config_rates():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=16, n_positions=8, n_embd=8, n_layer=1, n_head=2))
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(m.p == 0.1 for m in dropouts)
    train.disable_dropout(model)
    assert all(m.p == 0.0 for m in dropouts)
    assert (model.config.resid_pdrop, model.config.attn_pdrop, model.config.embd_pdrop) == (0, 0, 0)
    model.train()
    ids = torch.randint(0, 16, (2, 8))
    torch.testing.assert_close(model(ids).logits, model.eval()(ids).logits, rtol=0, atol=0)


# ----------------------------------------------------------------------------- host reads
HOST_READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__")
OURS = ("train.py", "loss.py", "rollout.py", "distributed.py")


class HostReads:
    """Counts, by call site, every read of a tensor's value back to Python (on a GPU each waits
    for the device to finish the work queued so far) made from this repository's files.
    transformers' own reads (its SDPA mask check) and the optimizer's step counter (a CPU tensor)
    are left out: not ours to change, and the latter no wait at all."""

    def __init__(self):
        self.sites = collections.Counter()
        self.originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def __enter__(self):
        for name, original in self.originals.items():
            def counted(tensor, *args, _name=name, _original=original, **kwargs):
                caller = traceback.extract_stack(limit=2)[0]
                if os.path.basename(caller.filename) in OURS:
                    self.sites[(os.path.basename(caller.filename), caller.name, _name)] += 1
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, name, counted)
        return self

    def __exit__(self, *exc):
        for name, original in self.originals.items():
            setattr(torch.Tensor, name, original)

    @property
    def total(self):
        return sum(self.sites.values())


def update_batch(rows=16, prompt=4, completion=6, seed=0):
    from tiny import tiny_policy

    model, _ = tiny_policy()
    torch.manual_seed(seed)
    completion_ids = torch.randint(3, 15, (rows, completion))
    prompt_mask = torch.ones(rows, prompt, dtype=torch.long)
    prompt_mask[::2, :2] = 0  # two prompt lengths: micro-batches cut different padding
    batch = Rollouts(torch.randint(3, 15, (rows, prompt)), completion_ids, prompt_mask,
                     completion_mask(completion_ids, 1), [""] * rows)
    return model, batch, torch.randn(rows, completion) - 2.0, torch.randn(rows)


@pytest.mark.parametrize("cov_method", ["none", "clip-cov", "kl-cov"])
def test_update_reads_from_the_device_a_fixed_number_of_times_whatever_the_micro_batches(
        cov_method):
    """16 sequences, 2 optimizer steps, in micro-batches of 8, 2 and 1: the same host reads each
    time. Per optimizer step: its micro-batch plan and whether its gradient norm is finite; per
    RL step: the token counts, the statistics and the gradient norm, one read each."""
    counts = {}
    for micro in (8, 2, 1):
        model, batch, old_logprobs, advantages = update_batch()
        cfg = train.Config(prompts_per_step=8, group_size=2, updates_per_step=2,
                           micro_batch_size=micro, max_new_tokens=6, cov_method=cov_method,
                           cov_ratio=0.1).resolved()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        with HostReads() as reads:
            out = train.policy_update(model, optimizer, batch, old_logprobs, advantages, cfg,
                                      {"clip_high": 0.28}, torch.device("cpu"), 1)
        counts[micro] = reads.total
        assert out["grad_norm"] > 0
    assert counts == {8: 2 * 2 + 3, 2: 2 * 2 + 3, 1: 2 * 2 + 3}, counts


def test_policy_loss_statistics_stay_on_the_device():
    logp = torch.randn(4, 8) - 2
    with HostReads() as reads:
        for cov_method in ("none", "clip-cov", "kl-cov"):
            loss, stats = policy_loss(logp, logp + 0.3 * torch.randn(4, 8), torch.randn(4),
                                      torch.ones(4, 8), entropy=torch.rand(4, 8),
                                      cov_method=cov_method, cov_ratio=0.2)
            assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in stats.values())
    assert reads.total == 0, reads.sites
