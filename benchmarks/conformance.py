"""Conformance run: every pruning method on models nobody here wrote, or a clear word why not.

Every torchvision classification builder up to `--max-params` parameters (at a small input size) and five models of
this project's own (a `TransformerEncoder` text classifier, an LSTM and a GRU classifier, a model whose embedding is
tied to its output layer, one whose `Parameter` is shared by two modules; see `benchmarks/conformance_models.py`),
pruned by every method of `METHODS` at each `--sparsities`, with `--steps` steps on batches of 2. FORCE and Iterative
SNIP are run with both saliency losses (`cross_entropy`, `raw_nll`); every other data-driven method with its default.
Batches hold `--bs` examples (8): with BatchNorm in train mode, 2 examples normalise each channel of a 1x1 feature map
to +-1 and collapse most masks by themselves.
The project's models are also pruned with the weights their default leaves out: attention projections, recurrent
weights or the embedding (`layer_types=PRUNABLE_TYPES + (group,)`).

Each case must either keep exactly k distinct weights (k = round((1 - s) m), each tied or shared weight counted once)
or raise the package's own one-line error. For every mask it records what `prune_at_init` says about it: empty layers,
whether the output still depends on the input, and the share of kept weights whose saliency was exactly 0 (the tie rule
chose them). Nothing is trained.

The committed table (`benchmarks/results/conformance.json`, shown on the "Which models it prunes" page) came from two
processes side by side, one thread each, each taking every other model (largest first):

    OMP_NUM_THREADS=1 python benchmarks/conformance.py --shard 0/2 --out benchmarks/results/conformance.json &
    OMP_NUM_THREADS=1 python benchmarks/conformance.py --shard 1/2 --out benchmarks/results/conformance.json

(the thread-seconds they took are in the file's `meta`), and `--quick` runs a few small models in seconds (what the
tests run). The run resumes: records already in `--out` are kept and skipped; shards write to it under a lock.
"""
from __future__ import annotations

import argparse, fcntl, json, os, sys, time, traceback, warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conformance_models import all_cases, project_cases, torchvision_cases, torchvision_skipped  # noqa: E402

from force_edu.masks import PRUNABLE_TYPES, n_kept, prunable_weights, weight_of  # noqa: E402
from force_edu.methods import METHODS, SALIENCY_LOSSES, prune_at_init  # noqa: E402
from force_edu.diagnose import PruningWarning  # noqa: E402

QUICK = ['mobilenet_v3_small', 'squeezenet1_1', 'shufflenet_v2_x0_5', 'transformer_classifier', 'lstm_classifier',
         'gru_classifier', 'tied_embedding_lm_classifier', 'shared_parameter_mlp']
GROUP = {'transformer_classifier': 'attention', 'lstm_classifier': 'recurrent', 'gru_classifier': 'recurrent',
         'tied_embedding_lm_classifier': 'embedding', 'shared_parameter_mlp': None}


def losses_of(method):
    "The saliency losses a method is run with: both for FORCE and Iterative SNIP, its default for the others."
    m = METHODS[method]
    if not m.uses_data: return [None]
    return list(SALIENCY_LOSSES) if method in ('force', 'iter_snip') else [m.default_loss]


def _ours(e: BaseException) -> bool:
    "Whether `e` was raised by force_edu's own code (the last frame of its traceback is in the package), in one line."
    frames = traceback.extract_tb(e.__traceback__)
    return bool(frames) and '/force_edu/' in frames[-1].filename.replace('\\', '/') and '\n' not in str(e)


def run_case(case, model, method, sparsity, loss, selection, steps, bs):
    "One pruning: its record (never raises)."
    meth = METHODS[method]
    layer_types = PRUNABLE_TYPES if selection is None else PRUNABLE_TYPES + (selection,)
    T = steps if (meth.iterative or meth.default_steps > 1) else 1
    rec = dict(model=case.name, source=case.source, selection=selection or 'default', method=method,
               loss=loss, sparsity=sparsity)
    t0 = time.perf_counter()
    try:
        ws = prunable_weights(model, layer_types)
        m = sum(weight_of(h).numel() for h in ws.values())
        distinct = len({id(weight_of(h)) for h in ws.values()}) == len(ws)
        k = n_kept(m, sparsity)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always', PruningWarning)
            c = prune_at_init(model, case.batches(T, bs=bs, seed=1), sparsity, method, steps=T if T > 1 else None,
                              loss_func=None if loss is None else SALIENCY_LOSSES[loss], layer_types=layer_types)
        ours = [str(w.message) for w in caught if issubclass(w.category, PruningWarning)]
        rec.update(status='ok', m=m, k=k, kept=c.kept, exact_k=c.kept == k and c.total == m and distinct,
                   layers=len(c), empty_layers=len(c.dead_layers), empty_names=c.dead_layers[:5],
                   connected=c.connected, zero_score_share=c.zero_score_share, coverage=c.coverage,
                   warned=bool(ours), warning=ours[0] if ours else None)
    except Exception as e:
        rec.update(status='error', ours=_ours(e), error=f"{type(e).__name__}: {e}"[:600])
    rec['seconds'] = round(time.perf_counter() - t0, 3)
    return rec


def plan(cases, sparsities):
    for case in cases:
        sels = [None] + ([GROUP[case.name]] if GROUP.get(case.name) else [])
        for sel in sels:
            for method in METHODS:
                for loss in losses_of(method):
                    for s in sparsities: yield case, sel, method, loss, s


def key(r): return (r['model'], r['selection'], r['method'], r['loss'], r['sparsity'])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--max-params', type=float, default=100e6, help='torchvision builders up to this many parameters')
    p.add_argument('--sparsities', type=float, nargs='+', default=[0.9, 0.99])
    p.add_argument('--steps', type=int, default=3, help='steps of the iterative methods (and batch groups of the _mb ones)')
    p.add_argument('--only', nargs='+', help='only these models (names of cases)')
    p.add_argument('--quick', action='store_true', help=f'only {", ".join(QUICK)}')
    p.add_argument('--threads', type=int, default=1, help='torch CPU threads')
    p.add_argument('--bs', type=int, default=8, help='examples per batch')
    p.add_argument('--shard', default='0/1', help='i/n: run every n-th model from the i-th, largest first')
    p.add_argument('--out', default='benchmarks/results/conformance.json')
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    cases = all_cases(int(a.max_params))
    only = QUICK if a.quick else a.only
    if only: cases = [c for c in cases if c.name in only]
    i, n = map(int, a.shard.split('/'))
    cases = sorted(cases, key=lambda c: -c.n_params)[i::n] if n > 1 else cases
    out = Path(a.out)
    done = {key(r) for r in _load(out)['records']}
    todo = [t for t in plan(cases, a.sparsities) if (t[0].name, t[1] or 'default', t[2], t[3], t[4]) not in done]
    print(f"conformance: {len(cases)} models, {len(todo)} prunings to run ({len(done)} already in {out})", flush=True)
    model, built, new, t_last = None, None, [], time.perf_counter()
    for j, (case, sel, method, loss, s) in enumerate(todo):
        if built != case.name: model, built = case.build(), case.name
        r = run_case(case, model, method, s, loss, sel, a.steps, a.bs)
        new.append(r)
        flag = 'ok' if r['status'] == 'ok' and r['exact_k'] else ('OUR ERROR' if r.get('ours') else 'FAIL')
        print(f"{j+1}/{len(todo)} {case.name} [{sel or 'default'}] {method} {loss} {s}: {flag} {r.get('error', '')[:150]} "
              f"{r['seconds']:.1f}s", flush=True)
        if len(new) >= 20 or j + 1 == len(todo):
            now = time.perf_counter()
            _save(out, new, a, now - t_last)
            new, t_last = [], now
    if not todo: _save(out, [], a, 0)


def _load(out):
    return json.loads(out.read_text()) if out.exists() else dict(meta={}, records=[])


def _save(out, new, a, seconds):
    "Add the records `new` and `seconds` of one thread to `out`, under a lock (shards share the file)."
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(out.name + '.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = _load(out)
        have = {key(r) for r in data['records']}
        data['records'] += [r for r in new if key(r) not in have]
        meta = data['meta']
        meta.update(command=f"OMP_NUM_THREADS=1 python benchmarks/conformance.py --steps {a.steps} --bs {a.bs} --sparsities "
                            f"{' '.join(map(str, a.sparsities))} --out {a.out}" + (' --quick' if a.quick else '')
                            + (f" --only {' '.join(a.only)}" if a.only else '')
                            + (f" (shards: --shard i/{a.shard.split('/')[1]})" if a.shard != '0/1' else ''),
                    thread_seconds=round(meta.get('thread_seconds', 0) + seconds, 1), torch=torch.__version__,
                    threads=a.threads, steps=a.steps, bs=a.bs, sparsities=a.sparsities, max_params=a.max_params,
                    skipped=[list(x) for x in torchvision_skipped(int(a.max_params))])
        tmp = out.with_name(out.name + '.tmp')
        tmp.write_text(json.dumps(data, indent=0))
        os.replace(tmp, out)


if __name__ == '__main__':
    main()
