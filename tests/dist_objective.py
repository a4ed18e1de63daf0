"""One policy update on a fixed global batch, on 1 process or under torchrun: the parameters after
it must not depend on the number of ranks or micro-batches (tests/test_train.py runs this). One
update from the same initial weights per loss aggregation mode; OUT.pt maps each mode to its result.

    python tests/dist_objective.py OUT.pt MICRO_BATCH
    torchrun --nproc_per_node=2 tests/dist_objective.py OUT.pt MICRO_BATCH
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict  # noqa: E402
from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402

import train  # noqa: E402
from distributed import setup_distributed, shard_model, teardown_distributed  # noqa: E402
from rollout import Rollouts, completion_mask, policy_logprobs_and_entropy  # noqa: E402

out_path, micro_batch = sys.argv[1], int(sys.argv[2])
rank, world, device = setup_distributed()
results = {}
for loss_agg in train.LOSS_AGG_MODES:
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=20, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2,
                                         num_key_value_heads=2, max_position_embeddings=32,
                                         pad_token_id=0, eos_token_id=1))
    # a fixed global batch: 4 groups of 2, completions of very different lengths (EOS = 1)
    g = torch.Generator().manual_seed(1)
    B, P, T = 8, 3, 6
    completion = torch.randint(2, 20, (B, T), generator=g)
    for row, length in enumerate([1, 6, 2, 5, 3, 6, 1, 4]):
        if length < T:
            completion[row, length - 1] = 1
    batch = Rollouts(torch.randint(2, 20, (B, P), generator=g), completion,
                     torch.ones(B, P, dtype=torch.long), completion_mask(completion, 1), [""] * B)
    old_logprobs, _ = policy_logprobs_and_entropy(model, batch, micro_batch_size=B)
    old_logprobs = old_logprobs + 0.3 * torch.randn(B, T, generator=g)  # off-policy: some clip
    advantages = torch.randn(B, generator=g)
    rows = [r for r in range(B) if (r // 2) % world == rank]  # whole groups per rank
    if world > 1:
        shard_model(model)
    cfg = train.Config(updates_per_step=1, micro_batch_size=micro_batch, loss_agg=loss_agg,
                       max_new_tokens=T, prompts_per_step=4).resolved()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # SGD: a wrong loss scale shows
    knobs = {"clip_high": 0.28}
    stats = train.policy_update(model, optimizer, batch.select(rows), old_logprobs[rows],
                                advantages[rows], cfg, knobs, device, world)
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                 cpu_offload=True))
    results[loss_agg] = {"params": state, "loss": stats["loss/policy"],
                         "clipfrac": stats["loss/clipfrac"]}
if rank == 0:
    torch.save(results, out_path)
teardown_distributed()
