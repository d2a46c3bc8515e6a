"""The global top-k of `force_edu.speed.fast_topk_mask` (what the library calls) against the implementation it replaced, on ResNet-50's 23.5M scores.

    python benchmarks/topk_speed.py --threads 1 --out benchmarks/results/topk_cpu.json

`before` is the former `topk_mask` (kept here verbatim): `kthvalue` over all m scores, `int(keep.sum())`, a NaN check
with `isnan(scores).any()`, and a tie search `(scores == kth).nonzero()` that always runs. `after` is the current one:
the k-th largest bracketed by two order statistics of a fixed-seed sample of 2**16 scores, then one pass over the
scores, 64K at a time (each piece is compared with both ends of the bracket, counted and searched for the few scores
inside it while it is in cache), selection among the scores inside the bracket only, the tie search only when there
are ties. Both sides are timed alternately after a warm-up (median of `--repeats`), and their masks are checked to be
equal. (Inside `prune_at_init` the scores come one tensor per layer, and FORCE's |theta * grad| is computed in the same
pass: `topk_mask(grads, k, scale=theta)`; that is timed by `pruning_speed.py`, not here.)
Score vectors: FORCE-like `|randn * randn|`; iter_snip-like, with 90% of the scores -inf (weights already pruned);
and integer scores 0..9 (massive ties).
"""
from __future__ import annotations
import json, math, os, platform, statistics, sys, time
from pathlib import Path

import torch
from torch import Tensor
from fastcore.script import call_parse

sys.path.insert(0, str(Path(__file__).resolve().parent))


def topk_before(scores:Tensor, k:int) -> Tensor:
    "The former `topk_mask` (then in `force_edu.masks`), verbatim."
    scores = scores.detach().reshape(-1)
    m = scores.numel()
    if not 0 <= k <= m: raise ValueError(f"cannot keep k={k} of {m} scores")
    if k == m: return torch.ones(m, dtype=torch.bool, device=scores.device)
    if k == 0: return torch.zeros(m, dtype=torch.bool, device=scores.device)
    if torch.isnan(scores).any(): raise ValueError("saliency scores contain NaN; check the loss and the data")
    kth = scores.kthvalue(m - k + 1).values  # the k-th largest value
    keep = scores > kth
    missing = k - int(keep.sum())
    ties = (scores == kth).nonzero().squeeze(1)[:missing]  # nonzero() is in index order
    keep[ties] = True
    return keep


def score_vectors(m:int, seed:int=0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    force = (torch.randn(m, generator=g) * torch.randn(m, generator=g)).abs_()
    pruned = force.clone().masked_fill_(torch.rand(m, generator=g) < 0.9, -math.inf)
    return {'|randn*randn| (force)': force, '90% -inf (iter_snip)': pruned,
            'integers 0..9 (ties)': torch.randint(0, 10, (m,), generator=g).float()}


@call_parse
def main(m:int=23_520_842, # number of scores (about ResNet-50's 23.5M prunable weights)
         densities:str='0.5,0.05,0.01', # k/m (FORCE's schedule starts near 1 and ends at 1 - sparsity)
         repeats:int=5, # timed repeats of each side
         threads:int=1, # torch CPU threads
         out:str='benchmarks/results/topk_cpu.json', # where the JSON goes ('' for none)
        ):
    "Time the current `fast_topk_mask` against the former one."
    from force_edu.speed import fast_topk_mask as topk_mask
    from pruning_speed import side_by_side, machine_info
    torch.set_num_threads(threads)
    rows = []
    for name, s in score_vectors(m).items():
        for dens in [float(x) for x in densities.split(',')]:
            k = max(1, int(dens * m))
            if name.startswith('90%'): k = min(k, int(0.1 * m * 0.9))   # iter_snip keeps a subset of the finite scores
            assert torch.equal(topk_mask(s, k), topk_before(s, k))
            ta, tb = side_by_side(lambda: topk_mask(s, k), lambda: topk_before(s, k), repeats, 'cpu')
            rows.append(dict(scores=name, m=m, k=k, before_s=statistics.median(tb), after_s=statistics.median(ta),
                             speedup=statistics.median(tb) / statistics.median(ta)))
            r = rows[-1]
            print(f"{name:<24} k/m={k/m:<7.4f} before {r['before_s']:.3f} s  after {r['after_s']:.3f} s  "
                  f"x{r['speedup']:.1f}", flush=True)
    info = machine_info('cpu')
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(dict(machine=info, command='python benchmarks/topk_speed.py ' + ' '.join(sys.argv[1:]),
                                             rows=rows), indent=1) + '\n')
    return rows
