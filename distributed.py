"""Many processes, one model: torchrun set-up, reductions by name, and FSDP2 around generation.

Data parallelism as train.py and eval_passk.py use it. Every rank holds a shard of the model
(FSDP2), generates completions for its own prompts, and computes its part of the loss; gradients
are averaged by FSDP, and the numbers a step logs are summed across ranks here, by name.

  * `setup_distributed` / `teardown_distributed`: one process per GPU under torchrun (NCCL), or
    processes on a CPU (gloo), or one plain process.
  * `all_reduce_sum({"tokens": 3.0, ...})` and `all_gather_list([...])`: values travel by name, or
    as lists in rank order; identities on one process. Tensors are read back once per call.
  * `shard_model`: FSDP2's `fully_shard` on every decoder layer, then on the root.
  * `generation_mode`: gather the weights once, generate with no collectives, shard again.
  * `autocast`: bf16 compute for a model on a GPU that FSDP does not manage.

Under torchrun the model is always sharded, one rank included, so that one code path serves every
box. Nothing here assumes one host: ranks find their GPU through LOCAL_RANK.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import sys

import torch
import torch.distributed as dist


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world_size, device) of this process; torchrun sets RANK, WORLD_SIZE and LOCAL_RANK.

    One GPU per rank (NCCL, `device_id` pinned so collectives never touch another rank's GPU),
    gloo on CPU. Without torchrun: one process, the first GPU if there is one. The collective
    timeout is 30 minutes, not NCCL's 10: the other ranks wait in a barrier while rank 0 writes a
    full checkpoint, which takes minutes for a 7B model on a slow disk.
    """
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    timeout = datetime.timedelta(minutes=30)
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device, timeout=timeout)
        return dist.get_rank(), dist.get_world_size(), device
    dist.init_process_group("gloo", timeout=timeout)
    return dist.get_rank(), dist.get_world_size(), torch.device("cpu")


def teardown_distributed() -> None:
    """End a torchrun process: barrier, destroy the process group, and exit with status 0 without
    running C++ destructors. Measured on CPU (gloo) with a loaded machine: about 1 run in 10 aborted
    in those destructors at interpreter exit ("terminate called without an active exception";
    pytorch issue 190489), after every result was written, whether or not the group was destroyed
    first; leaving with os._exit gave 0 aborts in 16. Everything is written and closed by then.
    A no-op without torchrun.
    """
    if not dist.is_initialized():
        return
    dist.barrier()  # no rank leaves while another still talks to it
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def all_reduce_sum(values: dict[str, float | torch.Tensor], device: torch.device) -> dict[str, float]:
    """Each named number summed over all ranks (in float64; the identity on one process). Values
    may be 0-dim tensors on the device: they are stacked where they are, and the result is read
    back to the host once for the whole dict, not once per value.

    >>> all_reduce_sum({"tokens": 12.0, "correct": torch.tensor(3)}, torch.device("cpu"))
    {'tokens': 12.0, 'correct': 3.0}
    """
    names = list(values)  # every rank builds the same dict, so the same order
    tensor = torch.stack([torch.as_tensor(values[name], dtype=torch.float64, device=device)
                          for name in names])
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return dict(zip(names, tensor.tolist()))


def all_gather_list(items: list) -> list:
    """Every rank's list, concatenated in rank order (picklable items; the identity on one process)."""
    if not dist.is_initialized():
        return list(items)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, items)
    return [x for part in gathered for x in part]


def shard_model(model) -> None:
    """FSDP2: `fully_shard` every decoder layer, then the root (embeddings, norm, lm_head).

    The layer classes come from the model's own `_no_split_modules`, so this works for any HF
    causal LM. bf16 compute with fp32 master weights and gradient reduction on GPUs.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    on_gpu = next(model.parameters()).is_cuda
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if on_gpu \
        else MixedPrecisionPolicy()
    layer_classes = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in layer_classes]
    if not layers:
        raise ValueError(f"{type(model).__name__} names no decoder layer class in _no_split_modules; "
                         "FSDP needs one to shard by layer")
    for layer in layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)


@contextlib.contextmanager
def generation_mode(model):
    """Gather the full parameters once, generate with no collectives, shard again.

    Under FSDP each layer's forward all-gathers its weights. During generation ranks finish
    their sequences at different lengths, so they would run different numbers of forwards, and a
    collective that one rank skips deadlocks the others. With every unit unsharded up front and
    resharding switched off, generation runs locally on each rank. Also eval mode and `autocast`.
    """
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    was_training = model.training
    model.eval()
    if units:
        model.set_reshard_after_forward(False)
        for unit in units:
            unit.unshard()
    try:
        with autocast(model):  # bf16 generation on a GPU without FSDP too
            yield
    finally:
        if units:
            for unit in units:
                unit.reshard()
            model.set_reshard_after_forward(True)
            model.set_reshard_after_forward(False, recurse=False)  # the root's own default
        model.train(was_training)


def autocast(model):
    """bf16 autocast for a model on a GPU that FSDP does not manage (one process, no torchrun);
    under FSDP its MixedPrecisionPolicy computes in bf16 already. A no-op on a CPU (fp32)."""
    from torch.distributed.fsdp import FSDPModule

    use = next(model.parameters()).is_cuda and not isinstance(model, FSDPModule)
    return torch.autocast("cuda", dtype=torch.bfloat16) if use else contextlib.nullcontext()
