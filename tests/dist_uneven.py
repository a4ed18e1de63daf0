"""Two ranks whose work differs, under FSDP2 (tests/test_train.py runs this under torchrun; it
must finish, not hang):
  * dynamic sampling: rank 0's groups all have signal after one round, rank 1's never do, so
    rank 1 wants every round and rank 0 none after the first;
  * evaluation: held-out sets that do not split evenly (3 prompts) or leave a rank empty (1).

    torchrun --standalone --nproc_per_node=2 tests/dist_uneven.py OUT.json
"""
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import train  # noqa: E402
from distributed import all_gather_list, generation_mode, setup_distributed, shard_model, teardown_distributed  # noqa: E402,E501
from eval_passk import evaluate_on_ranks  # noqa: E402
from tiny import tiny_policy  # noqa: E402

rank, world, device = setup_distributed()
model, tok = tiny_policy(max_positions=64)
shard_model(model)
torch.manual_seed(rank)  # the ranks sample different lengths, so their generate calls differ too
problems = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(10) for b in range(10)]
cfg = train.Config(prompts_per_step=8, group_size=4, max_new_tokens=12, max_sampling_rounds=3).resolved()
calls = []
real_generate = train.generate_rollouts


def counting_generate(*args, **kwargs):
    calls.append(len(args[2]))
    return real_generate(*args, **kwargs)


train.generate_rollouts = counting_generate


def reward(completion, answer, position=iter(range(10**6))):
    """Rank 0: 0, 1, 0, 1, ... (every group has signal); rank 1: always 0 (no group has)."""
    return float(next(position) % 2) if rank == 0 else 0.0


with generation_mode(model):
    rollouts, rewards, indices, stats = train.collect_rollouts(
        model, tok, problems, list(range(4 * rank, 4 * rank + 4)), cfg, random.Random(rank),
        reward_fn=reward)
out = {"rank": rank, "rounds": stats["sampling/rounds"], "generate_calls": calls,
       "unfilled": stats["groups/unfilled"], "rows": rollouts.completion_ids.shape[0]}
for n_prompts in (3, 1):  # 3 prompts over 2 ranks: 2 + 1; 1 prompt: rank 1 gets none
    held_out = problems[:n_prompts]
    with generation_mode(model):
        result = evaluate_on_ranks(model, tok, held_out, lambda c, a: 1.0, 4, [1, 4], 12,
                                   prompts_per_batch=1)
    out[f"eval_{n_prompts}"] = {"correct": result["correct"], "pass@1": result["pass@1"]}
gathered = all_gather_list([out])
if rank == 0:
    with open(sys.argv[1], "w") as f:
        json.dump(gathered, f)
teardown_distributed()
