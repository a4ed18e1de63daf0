import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rollout import (completion_mask, concat_rollouts, fused_logprobs_and_entropy, generate_rollouts,
                     logprobs_and_entropy, policy_logprobs_and_entropy,
                     sequence_logprobs_and_entropy)


def naive64(hidden, weight, labels, temperature):
    """The slow reference: full float64 logits, log_softmax, gather, entropy."""
    h = hidden.detach().double().requires_grad_()
    w = weight.detach().double().requires_grad_()
    logp_all = torch.log_softmax(h @ w.T / temperature, dim=-1)
    logp = logp_all.gather(1, labels[:, None]).squeeze(1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy, h, w


@pytest.mark.parametrize("n, chunk, temperature", [(37, 8, 1.0), (37, 8, 0.7), (50, 16, 1.3),
                                                    (5, 64, 1.0), (64, 64, 0.5), (1, 4, 1.0)])
def test_fused_matches_float64_reference(n, chunk, temperature):
    torch.manual_seed(n + chunk)
    H, V = 24, 101
    hidden = (torch.randn(n, H) * 0.5).requires_grad_()
    weight = (torch.randn(V, H) * 0.5).requires_grad_()
    labels = torch.randint(0, V, (n,))
    g_logp, g_ent = torch.randn(n), torch.randn(n)  # arbitrary upstream gradients of both outputs

    logp, entropy = fused_logprobs_and_entropy(hidden, weight, labels, chunk, temperature)
    ((logp * g_logp).sum() + (entropy * g_ent).sum()).backward()
    ref_logp, ref_ent, h64, w64 = naive64(hidden, weight, labels, temperature)
    ((ref_logp * g_logp.double()).sum() + (ref_ent * g_ent.double()).sum()).backward()

    close = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logp.double(), ref_logp.detach(), **close)
    torch.testing.assert_close(entropy.double(), ref_ent.detach(), **close)
    torch.testing.assert_close(hidden.grad.double(), h64.grad, **close)
    torch.testing.assert_close(weight.grad.double(), w64.grad, **close)


def test_fused_grad_of_one_output_only_and_frozen_weight():
    torch.manual_seed(0)
    hidden = torch.randn(10, 8, requires_grad=True)
    weight = torch.randn(30, 8)  # frozen head: no weight gradient is computed
    labels = torch.randint(0, 30, (10,))
    _, entropy = fused_logprobs_and_entropy(hidden, weight, labels, 4)
    entropy.sum().backward()
    _, ref_ent, h64, _ = naive64(hidden, weight, labels, 1.0)
    ref_ent.sum().backward()
    torch.testing.assert_close(hidden.grad.double(), h64.grad, rtol=1e-5, atol=1e-5)


def reference_from_logits(logits):
    """float64 log-softmax / entropy of given logits (the sampler's view of them)."""
    logp_all = torch.log_softmax(logits.double(), dim=-1)
    return logp_all, -(logp_all.exp() * logp_all).sum(-1)


def test_fused_bf16_inputs_score_the_bf16_logits_the_sampler_sees():
    """bf16 weights (FSDP mixed precision): the logits are the bf16 matmul that the model's own
    lm_head computes when it samples; everything after it is fp32."""
    torch.manual_seed(0)
    hidden = (torch.randn(40, 32) * 0.5).bfloat16().requires_grad_()
    weight = (torch.randn(200, 32) * 0.5).bfloat16().requires_grad_()
    labels = torch.randint(0, 200, (40,))
    logp, entropy = fused_logprobs_and_entropy(hidden, weight, labels, 16)
    assert logp.dtype == torch.float32 and entropy.dtype == torch.float32
    (logp.sum() + entropy.sum()).backward()
    assert hidden.grad.dtype == torch.bfloat16 and weight.grad.dtype == torch.bfloat16
    sampler_logits = torch.nn.functional.linear(hidden.detach(), weight.detach())  # (40, 200) bf16
    ref_all, ref_ent = reference_from_logits(sampler_logits)
    torch.testing.assert_close(logp.double(), ref_all.gather(1, labels[:, None]).squeeze(1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy.double(), ref_ent, rtol=1e-5, atol=1e-5)
    # the gradient: dL/dz in fp32, its two matmuls in bf16 (as a bf16 lm_head's backward)
    ref_logp, ref_ent64, h64, _ = naive64(hidden.float(), weight.float(), labels, 1.0)
    (ref_logp.sum() + ref_ent64.sum()).backward()
    torch.testing.assert_close(hidden.grad.double(), h64.grad, rtol=2e-2, atol=2e-2)


def test_fused_under_autocast_matches_the_autocast_lm_head():
    """Single-GPU training runs under bf16 autocast: the head multiplies in bf16 as an autocast
    nn.Linear does (so the trainer scores what the sampler drew from), then works in fp32."""
    torch.manual_seed(0)
    hidden = (torch.randn(20, 16) * 0.5).requires_grad_()
    weight = (torch.randn(64, 16) * 0.5).requires_grad_()
    labels = torch.randint(0, 64, (20,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logp, entropy = fused_logprobs_and_entropy(hidden, weight, labels, 8)
        sampler_logits = torch.nn.functional.linear(hidden.detach(), weight.detach())
    assert sampler_logits.dtype == torch.bfloat16 and logp.dtype == torch.float32
    ref_all, ref_ent = reference_from_logits(sampler_logits)
    torch.testing.assert_close(logp.double(), ref_all.gather(1, labels[:, None]).squeeze(1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy.double(), ref_ent, rtol=1e-5, atol=1e-5)
    # and it is not the fp32 head: bf16 rounding of the logits is visible at this size
    fp32_logp, _ = fused_logprobs_and_entropy(hidden.detach(), weight.detach(), labels, 8)
    assert (fp32_logp - logp.detach()).abs().max() > 1e-4
    (logp.sum() + entropy.sum()).backward()
    ref_logp, ref_ent64, h64, _ = naive64(hidden, weight, labels, 1.0)
    (ref_logp.sum() + ref_ent64.sum()).backward()
    torch.testing.assert_close(hidden.grad.double(), h64.grad, rtol=2e-2, atol=2e-2)


class MatmulDtypes(TorchDispatchMode):
    """Records the input dtypes of every matrix product the code under it runs."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.addmm_):
            self.seen.append(tuple(a.dtype for a in args if isinstance(a, torch.Tensor))[-2:])
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("route", ["bf16 weights", "autocast", "fp32"])
def test_fused_backward_multiplies_in_bf16_within_the_error_of_a_bf16_lm_head(route):
    """Where the logits are a bf16 matmul, the backward's two (n x V x H) matmuls run in bf16 too
    (fp32 accumulation, dL/dz built in fp32). Its error against float64 must stay within that of
    the plain bf16 path, a bf16 lm_head with fp32 softmax under autograd (what a bf16 step without
    the fused head computes). In fp32 every matmul stays fp32."""
    torch.manual_seed(0)
    n, H, V = 256, 64, 4096
    hidden, weight = torch.randn(n, H), torch.randn(V, H) * (3.0 / H**0.5)  # logits of std ~3
    labels = torch.randint(0, V, (n,))
    g_logp, g_ent = torch.randn(n) / n, torch.randn(n) * 0.1 / n  # token-mean loss, an entropy term

    def grads(head, dtype, autocast):
        h = hidden.to(dtype).requires_grad_()
        w = weight.to(dtype).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logp, entropy = head(h, w)
        loss = (logp * g_logp.to(logp.dtype)).sum() + (entropy * g_ent.to(logp.dtype)).sum()
        with MatmulDtypes() as backward:
            loss.backward()
        return h.grad.double(), w.grad.double(), backward.seen

    def plain(h, w):  # the unfused path: (n, V) logits, fp32 log-softmax, autograd
        logp_all = torch.log_softmax((h @ w.T).float(), -1)
        return logp_all.gather(1, labels[:, None]).squeeze(1), -(logp_all.exp() * logp_all).sum(-1)

    def fused(h, w):
        return fused_logprobs_and_entropy(h, w, labels, 64)

    dtype, autocast = {"bf16 weights": (torch.bfloat16, False), "autocast": (torch.float32, True),
                       "fp32": (torch.float32, False)}[route]
    h64, w64, _ = grads(plain, torch.float64, False)
    h_fused, w_fused, matmuls = grads(fused, dtype, autocast)
    h_plain, w_plain, _ = grads(plain, dtype, autocast)
    gemm = torch.float32 if route == "fp32" else torch.bfloat16
    assert len(matmuls) == 3 * (n // 64) and set(matmuls) == {(gemm, gemm)}  # logits, 2 gradients
    error = lambda g, ref: ((g - ref).norm() / ref.norm()).item()  # noqa: E731
    for fused_grad, plain_grad, ref in ((h_fused, h_plain, h64), (w_fused, w_plain, w64)):
        assert error(fused_grad, ref) <= 1.1 * error(plain_grad, ref) + 1e-6
        assert error(fused_grad, ref) < (1e-2 if route != "fp32" else 1e-6)


def test_logits_entry_point_matches_reference_and_bf16():
    torch.manual_seed(0)
    logits = torch.randn(23, 57, requires_grad=True)
    labels = torch.randint(0, 57, (23,))
    logp, entropy = logprobs_and_entropy(logits, labels, chunk_size=5)
    ref = torch.log_softmax(logits.double(), -1)
    torch.testing.assert_close(logp.double(), ref.gather(1, labels[:, None]).squeeze(1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(entropy.double(), -(ref.exp() * ref).sum(-1), rtol=1e-6, atol=1e-6)
    logp16, ent16 = logprobs_and_entropy(logits.detach().bfloat16(), labels, chunk_size=5)
    assert logp16.dtype == torch.float32
    torch.testing.assert_close(ent16, entropy.detach(), rtol=0, atol=0.05)


def test_completion_mask_keeps_first_eos():
    ids = torch.tensor([[5, 6, 2, 0, 0],    # EOS at 2, then padding
                        [5, 2, 2, 2, 2],    # pad == EOS: only the first counts
                        [5, 6, 7, 8, 9],    # truncated: no EOS, all kept
                        [2, 5, 6, 7, 8]])   # EOS first
    assert completion_mask(ids, 2).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1] * 5, [1, 0, 0, 0, 0]]
    # several EOS ids (chat models end on <|im_end|> or <|endoftext|>)
    assert completion_mask(torch.tensor([[5, 9, 2, 7]]), [2, 9]).tolist() == [[1, 1, 0, 0]]


@pytest.fixture(scope="module")
def tiny_policy():
    from tiny import tiny_policy as build

    return build()


def test_rollouts_shapes_groups_and_mask(tiny_policy):
    model, tok = tiny_policy
    torch.manual_seed(1)
    r = generate_rollouts(model, tok, ["1+2=", "3+4+5="], group_size=3, max_new_tokens=6)
    assert r.prompt_ids.shape[0] == 6 and r.completion_ids.shape[0] == 6
    assert torch.equal(r.prompt_ids[0], r.prompt_ids[2]) and not torch.equal(r.prompt_ids[2], r.prompt_ids[3])
    assert r.prompt_mask[0].tolist()[:2] == [0, 0]  # "1+2=" is left-padded to "3+4+5="'s width
    assert torch.equal(r.loss_mask, completion_mask(r.completion_ids, 1))
    assert len(r.completions) == 6 and all("<" not in c for c in r.completions)


def test_training_logprobs_equal_sampling_distribution(tiny_policy):
    """What the loss sees must be the distribution generate sampled from (left padding included)."""
    model, tok = tiny_policy
    enc = tok(["1+2=", "3+4+5+6="], return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(2)
    out = model.generate(**enc, do_sample=True, top_k=0, max_new_tokens=5, output_logits=True,
                         return_dict_in_generate=True, pad_token_id=0, eos_token_id=1)
    completion = out.sequences[:, enc.input_ids.shape[1]:]
    mask = completion_mask(completion, 1)
    sampled = torch.stack([torch.log_softmax(step.float(), -1).gather(1, completion[:, t : t + 1]).squeeze(1)
                           for t, step in enumerate(out.logits)], dim=1)
    logp, entropy = sequence_logprobs_and_entropy(
        model, out.sequences, torch.cat([enc.attention_mask, mask], 1), completion.shape[1], chunk_size=3)
    torch.testing.assert_close(logp * mask, sampled * mask, rtol=1e-4, atol=1e-5)
    step_entropy = torch.stack([torch.distributions.Categorical(logits=s.float()).entropy()
                                for s in out.logits], dim=1)
    torch.testing.assert_close(entropy * mask, step_entropy * mask, rtol=1e-4, atol=1e-5)


def test_micro_batched_equals_one_batch(tiny_policy):
    model, tok = tiny_policy
    torch.manual_seed(3)
    r = generate_rollouts(model, tok, ["1+2=", "3+4+5=", "9="], group_size=2, max_new_tokens=4)
    a = policy_logprobs_and_entropy(model, r, micro_batch_size=6)
    b = policy_logprobs_and_entropy(model, r, micro_batch_size=4)
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a[1], b[1], rtol=1e-5, atol=1e-6)


def test_length_sorted_micro_batches_match_one_padded_forward(tiny_policy):
    """Rows go through shortest first, with their shared padding cut: the result must still be,
    row for row, what one forward of the whole left-padded batch gives."""
    model, tok = tiny_policy
    torch.manual_seed(6)
    r = generate_rollouts(model, tok, ["1+2+3+4+5=", "9=", "3+4=", "8+8+8="], group_size=2, max_new_tokens=4)
    assert r.prompt_mask.sum(1).tolist() != sorted(r.prompt_mask.sum(1).tolist())  # not already in order
    logp, entropy = policy_logprobs_and_entropy(model, r, micro_batch_size=3)
    T, mask = r.completion_ids.shape[1], r.loss_mask
    position_ids = (r.attention_mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=r.input_ids, attention_mask=r.attention_mask,
                       position_ids=position_ids).logits[:, -T - 1 : -1].float()  # (B, T, V)
    reference = torch.log_softmax(logits, -1).gather(2, r.completion_ids.unsqueeze(2)).squeeze(2)
    torch.testing.assert_close(logp * mask, reference * mask, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(entropy * mask, torch.distributions.Categorical(logits=logits).entropy() * mask,
                               rtol=1e-4, atol=1e-5)


def test_concat_of_different_widths_keeps_each_rows_logprobs(tiny_policy):
    model, tok = tiny_policy
    torch.manual_seed(4)
    short = generate_rollouts(model, tok, ["1="], group_size=2, max_new_tokens=2)
    long = generate_rollouts(model, tok, ["1+2+3+4="], group_size=2, max_new_tokens=6)
    both = concat_rollouts([short, long])
    assert both.completions == short.completions + long.completions
    logp, _ = policy_logprobs_and_entropy(model, both, micro_batch_size=4)
    for part, rows in ((short, slice(0, 2)), (long, slice(2, 4))):
        alone, _ = policy_logprobs_and_entropy(model, part, micro_batch_size=4)
        T = part.completion_ids.shape[1]
        torch.testing.assert_close(logp[rows, :T] * part.loss_mask, alone * part.loss_mask,
                                   rtol=1e-4, atol=1e-5)


def test_sampler_ignores_the_checkpoints_generation_config(tiny_policy):
    """Instruct checkpoints ship repetition_penalty, top_k, ...: rollouts must stay pure sampling,
    so that the log-probs the sampler drew from are the ones the trainer computes."""
    model, tok = tiny_policy
    own = model.generation_config
    model.generation_config = own.__class__(**own.to_dict())
    model.generation_config.update(repetition_penalty=5.0, top_k=1, no_repeat_ngram_size=1)
    try:
        torch.manual_seed(5)
        r = generate_rollouts(model, tok, ["1+2="] * 4, group_size=8, max_new_tokens=6)
        assert model.generation_config.top_k == 1  # put back after the call
    finally:
        model.generation_config = own
    assert len(set(r.completions)) > 1  # top_k=1 would make all 32 samples identical
    logp, _ = policy_logprobs_and_entropy(model, r, micro_batch_size=16)
    mask = r.loss_mask.bool()
    assert r.sampler_logprobs.shape == logp.shape
    assert (r.sampler_logprobs - logp)[mask].abs().max() < 1e-5  # a penalty of 5 would be far off


def test_sampler_logprobs_include_temperature_and_top_p(tiny_policy):
    model, tok = tiny_policy
    torch.manual_seed(6)
    r = generate_rollouts(model, tok, ["1+2=", "3="], group_size=8, max_new_tokens=5, temperature=0.7)
    logp, _ = policy_logprobs_and_entropy(model, r, micro_batch_size=16, temperature=0.7)
    mask = r.loss_mask.bool()
    assert (r.sampler_logprobs - logp)[mask].abs().max() < 1e-5
    truncated = generate_rollouts(model, tok, ["1+2=", "3="], group_size=8, max_new_tokens=5, top_p=0.5)
    logp, _ = policy_logprobs_and_entropy(model, truncated, micro_batch_size=16)
    mask = truncated.loss_mask.bool()
    # top-p renormalises over the kept tokens: the sampler's log-probs are higher, never lower
    assert ((truncated.sampler_logprobs - logp)[mask] > -1e-5).all()
    assert (truncated.sampler_logprobs - logp)[mask].mean() > 0.05
    both = concat_rollouts([r, truncated.select([0, 3])])
    assert torch.equal(both.sampler_logprobs[-1, :5], truncated.sampler_logprobs[3])


def test_stops_on_the_chat_templates_end_of_turn_token():
    """A chat model ends its turn with a special token that is not its EOS (Qwen's <|im_end|>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from rollout import stop_token_ids

    words = ["<pad>", "</s>", "<unk>", "<|im_end|>", "<|im_start|>", *"0123456789+="]
    core = Tokenizer(models.WordLevel({t: i for i, t in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                  additional_special_tokens=["<|im_end|>", "<|im_start|>"])
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>{% endif %}")
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(words), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=64, pad_token_id=0, eos_token_id=1))
    with torch.no_grad():  # make <|im_end|> (id 3) likely, </s> (id 1) never
        model.lm_head.weight[3] = model.model.norm.weight.detach() * 3
        model.lm_head.weight[1] = 0
    assert stop_token_ids(tok, model) == [1, 3]
    r = generate_rollouts(model, tok, ["1+2="], group_size=16, max_new_tokens=12)
    ended = (r.completion_ids == 3).any(dim=1)
    assert ended.any()
    for row in range(16):  # the mask ends right after the first <|im_end|>
        ids = r.completion_ids[row].tolist()
        if 3 in ids:
            assert r.loss_mask[row].sum().item() == ids.index(3) + 1


def test_logprob_pass_keeps_only_the_final_hidden_state(tiny_policy):
    """`output_hidden_states=True` would keep every layer's states alive (tens of GB at 7B)."""
    model, tok = tiny_policy
    torch.manual_seed(7)
    r = generate_rollouts(model, tok, ["1+2=", "3+4+5="], group_size=2, max_new_tokens=4)
    seen = []
    original = model.forward

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.append((kwargs.get("output_hidden_states"), out.hidden_states))
        return out

    model.forward = spy
    try:
        logp, _ = policy_logprobs_and_entropy(model, r, micro_batch_size=4)
    finally:
        del model.forward
    assert seen and all(flag is not True and states is None for flag, states in seen)
    full = model(input_ids=r.input_ids, attention_mask=r.attention_mask,  # the reference: full logits
                 position_ids=(r.attention_mask.cumsum(1) - 1).clamp(min=0)).logits.double()
    T = r.completion_ids.shape[1]
    ref = torch.log_softmax(full[:, -T - 1 : -1], -1).gather(2, r.completion_ids[..., None]).squeeze(2)
    torch.testing.assert_close((logp * r.loss_mask).double(), ref * r.loss_mask, rtol=1e-5, atol=1e-5)


def test_shared_prefill_continues_exactly_where_a_full_prefill_would(tiny_policy):
    """Prompts of different lengths (left padding), 3 completions each: `generate` from the shared
    cache picks the same greedy tokens from the same scores as `generate` over 3 copies of every
    prompt; and the cache holds each prompt once per completion."""
    from transformers import GenerationConfig

    from rollout import shared_prefill

    model, tok = tiny_policy
    encoded = tok(["1+2=", "9+9+9+1=", "5="], return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    greedy = GenerationConfig(do_sample=False, max_new_tokens=5, eos_token_id=1, pad_token_id=0,
                              output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        full = model.generate(input_ids=ids.repeat_interleave(3, 0), attention_mask=mask.repeat_interleave(3, 0),
                              generation_config=greedy)
        cache = shared_prefill(model, ids, mask, group_size=3)
        assert list(cache.values())[0].get_seq_length() == ids.shape[1] - 1
        shared = model.generate(input_ids=ids.repeat_interleave(3, 0), attention_mask=mask.repeat_interleave(3, 0),
                                generation_config=greedy, **cache)
    assert torch.equal(full.sequences, shared.sequences)
    for a, b in zip(full.scores, shared.scores):
        assert torch.allclose(a, b, atol=1e-5)
    assert shared_prefill(model, ids, mask, group_size=1) == {}  # nothing to share
