"""Fused chunked log-prob + entropy vs the naive path: peak memory and time, forward + backward.

    python benchmarks/entropy_memory.py                      # N=4096, H=896, V=151936 (Qwen2.5-0.5B), fp32
    python benchmarks/entropy_memory.py --n 1024 --vocab 32000 --device cuda --dtype bfloat16
    python benchmarks/entropy_memory.py --n 16384 --hidden 1536 --device cuda --dtype bfloat16 --liger

Each variant runs in a fresh process (this script calls itself with --variant), so that one's
allocations cannot inflate the other's peak. On CPU the peak is the process's max RSS
(getrusage), minus the RSS after the inputs are allocated ("extra"); on CUDA it is
torch.cuda.max_memory_allocated. Both variants compute the same numbers: the script checks
logp, entropy and both gradients against each other. On CUDA each process first runs its variant
once on `chunk_size` rows with the same weight, untimed, so that one-off costs (cuBLAS set-up,
Triton compiling Liger's kernels) stay out of the time and the peak.

naive:  logits = h @ W.T; log_softmax; gather; entropy = -(p * logp).sum(); backward
fused:  rollout.fused_logprobs_and_entropy(h, W, labels, chunk_size)   (never holds N x V)
liger:  Liger-Kernel's LigerFusedLinearCrossEntropyLoss(reduction="none") = -logp per token, with
        --liger when liger-kernel is installed (Triton: GPUs only). It computes no entropy, so it
        does less work than the other two; its logp is compared, its gradients are not.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def forward_backward(args, hidden, weight, labels, g_logp, g_ent):
    """One variant's logp and entropy (N,), and the backward of sum(logp g_logp + entropy g_ent)."""
    import torch

    from rollout import fused_logprobs_and_entropy

    if args.variant == "liger":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss  # optional

        logp = -LigerFusedLinearCrossEntropyLoss(reduction="none")(weight, hidden, labels).float()
        entropy = torch.zeros_like(logp)  # Liger computes none
    elif args.variant == "naive":
        logits = hidden @ weight.T  # (N, V)
        logp_all = torch.log_softmax(logits.float(), dim=-1)
        logp = logp_all.gather(1, labels[:, None]).squeeze(1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    else:
        logp, entropy = fused_logprobs_and_entropy(hidden, weight, labels, args.chunk_size)
    ((logp * g_logp).sum() + (entropy * g_ent).sum()).backward() if args.variant != "liger" else \
        (logp * g_logp).sum().backward()
    return logp, entropy


def run_variant(args) -> dict:
    import torch

    torch.manual_seed(0)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    hidden = (torch.randn(args.n, args.hidden, device=device) * 0.5).to(dtype).requires_grad_()
    weight = (torch.randn(args.vocab, args.hidden, device=device) * 0.05).to(dtype).requires_grad_()
    labels = torch.randint(0, args.vocab, (args.n,), device=device)
    g_logp = torch.randn(args.n, device=device)
    g_ent = torch.randn(args.n, device=device)
    if device.type == "cuda":  # the variant once on a few rows, untimed (see the docstring)
        warm = slice(0, args.chunk_size)
        forward_backward(args, hidden[warm], weight, labels[warm], g_logp[warm], g_ent[warm])
        hidden.grad = weight.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = rss_mb()
    start = time.perf_counter()
    logp, entropy = forward_backward(args, hidden, weight, labels, g_logp, g_ent)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds = time.perf_counter() - start
    sample = slice(0, 64)
    return {"variant": args.variant, "seconds": seconds, "peak_mb": peak, "extra_mb": peak - base,
            "logp": logp[sample].tolist(), "entropy": entropy[sample].tolist(),
            "grad_hidden": hidden.grad[sample].float().flatten()[:512].tolist(),
            "grad_weight": weight.grad[:8].float().flatten()[:512].tolist()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=4096, help="tokens")
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--chunk_size", type=int, default=256)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1, help="runs per variant (min time reported)")
    parser.add_argument("--liger", action="store_true", help="also Liger-Kernel's fused linear CE (GPU)")
    parser.add_argument("--variant", choices=["naive", "fused", "liger"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    results = {}
    for variant in ("naive", "fused", "liger") if args.liger else ("naive", "fused"):
        runs = []
        for _ in range(args.repeats):
            out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--variant", variant],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{variant}: failed ({out.stderr.strip().splitlines()[-1] if out.stderr.strip() else '?'})")
                break
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        if not runs:
            continue
        results[variant] = min(runs, key=lambda r: r["seconds"])
        results[variant]["peak_mb"] = max(r["peak_mb"] for r in runs)
    naive, fused = results["naive"], results["fused"]
    import torch

    diffs = {k: (torch.tensor(naive[k]) - torch.tensor(fused[k])).abs().max().item()
             for k in ("logp", "entropy", "grad_hidden", "grad_weight")}
    print(f"N={args.n} H={args.hidden} V={args.vocab} {args.dtype} on {args.device}, "
          f"chunk {args.chunk_size}, forward + backward, {torch.get_num_threads()} threads")
    print(f"{'variant':<8}{'time (s)':>10}{'peak (MB)':>12}{'extra (MB)':>12}")
    for r in results.values():
        print(f"{r['variant']:<8}{r['seconds']:>10.2f}{r['peak_mb']:>12.0f}{r['extra_mb']:>12.0f}")
    print(f"fused / naive: time {fused['seconds'] / naive['seconds']:.2f}x, "
          f"peak memory {fused['peak_mb'] / naive['peak_mb']:.1%}, "
          f"extra memory {fused['extra_mb'] / naive['extra_mb']:.1%}")
    print("max |naive - fused|: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    if "liger" in results:
        liger = results["liger"]
        print(f"liger / fused: time {liger['seconds'] / fused['seconds']:.2f}x, "
              f"peak memory {liger['peak_mb'] / fused['peak_mb']:.1%} (logp only, no entropy); "
              f"max |naive - liger| logp "
              f"{(torch.tensor(naive['logp']) - torch.tensor(liger['logp'])).abs().max().item():.1e}")


if __name__ == "__main__":
    main()
