"Each option declared once (`force_edu.options`): every entry point takes it from the declaration, with one default."
import ast, inspect, json, pathlib, subprocess, sys, warnings
import pytest
from force_edu.options import (OPTIONS, PRUNE_OPTIONS, RUN_OPTIONS, SWEEP_OPTIONS, SWEEP_COMMAND, SESSION_OPTIONS, DEMO_OPTIONS,
                               LOSS_OPTIONS, REQUIRED, own_defaults, takes)
from force_edu.sensitivity import MaskedLoss, connection_sensitivity, force_objective, gradient_norm, hessian_gradient_product
from force_edu.theory import THEORY_OPTIONS, swap_gaps, estimate_crs
from force_edu.analysis import saliency_vs_steps, pruning_metrics
from force_edu.methods import prune_at_init, PruningJob
from force_edu.callback import PruneAtInitCallback, ForceCallback
from force_edu.sweep import Sweep, run_sweep, sweep
from force_edu.demo import run_demo, demo_run
from force_edu.cli import COMMANDS

LIB = pathlib.Path(__file__).parents[1]/'force_edu'
MODULES = sorted(p for p in LIB.glob('*.py') if p.name != '_modidx.py')

ENTRY_POINTS = [(prune_at_init, PRUNE_OPTIONS), (PruningJob, PRUNE_OPTIONS), (PruneAtInitCallback, RUN_OPTIONS),
                (ForceCallback, RUN_OPTIONS), (Sweep, SWEEP_OPTIONS), (run_sweep, {**SWEEP_OPTIONS, **SESSION_OPTIONS}),
                (sweep, SWEEP_COMMAND), (run_demo, DEMO_OPTIONS), (Sweep.run, SESSION_OPTIONS),
                *((f, LOSS_OPTIONS) for f in (MaskedLoss, connection_sensitivity, force_objective, gradient_norm,
                                              hessian_gradient_product, saliency_vs_steps, pruning_metrics)),
                (swap_gaps, THEORY_OPTIONS), (estimate_crs, THEORY_OPTIONS)]

@pytest.mark.parametrize('f,group', ENTRY_POINTS, ids=lambda x: getattr(x, '__qualname__', ''))
def test_every_entry_point_has_the_declared_defaults(f, group):
    ps = inspect.signature(f).parameters
    for n, o in group.items():
        assert n in ps, (f, n)
        assert ps[n].default is o.default or ps[n].default == o.default, (f, n, ps[n].default, o.default)

def test_one_default_per_option():
    ("Only the demo (an experiment sized for a CPU) and the lessons' quantities (the paper's $L$; the theory's BatchNorm"
     " in eval mode, for `vmap`) have settings of their own; every other group has the declared defaults.")
    for g in (PRUNE_OPTIONS, RUN_OPTIONS, SWEEP_OPTIONS, SWEEP_COMMAND, SESSION_OPTIONS): assert own_defaults(g) == {}
    assert own_defaults(DEMO_OPTIONS) == dict(sparsity=0.99, steps=10, out=None, bs=64, seed=0)
    assert own_defaults(LOSS_OPTIONS) == dict(loss_func='cross_entropy')
    assert own_defaults(THEORY_OPTIONS) == dict(loss_func='cross_entropy', bn_mode='eval')
    for name in ('sweep', 'demo'):   # the command line parses nothing to the functions' defaults
        got = vars(COMMANDS[name].parser(name).parse_args([]))
        params = inspect.signature(COMMANDS[name].function()).parameters
        assert got == {k: params[k].default for k in got}, name

def test_sweep_defaults_are_the_librarys():
    ps = inspect.signature(sweep).parameters
    for n in ('steps', 'mode', 'batches_per_step', 'bn_mode', 'temperature', 'samples_per_class'):
        assert ps[n].default == inspect.signature(prune_at_init).parameters.get(n, OPTIONS[n]).default, n
    assert ps['loss'].default is None and inspect.signature(prune_at_init).parameters['loss_func'].default is None

def test_a_check_per_option_one_line():
    for o in OPTIONS.values():
        assert o.help and not o.help.endswith('.'), o.name
    with pytest.raises(ValueError, match=r"^steps must be an integer >= 1 or None, got 0$"): ForceCallback(0.9, steps=0)
    with pytest.raises(ValueError, match=r"^mode must be one of exp, linear, got 'cubic'$"): prune_at_init(None, None, 0.9, mode='cubic')
    with pytest.raises(TypeError, match="unexpected keyword argument 'stesp'"): ForceCallback(0.9, stesp=3)
    with pytest.raises(ValueError, match="unknown pruning method"): PruneAtInitCallback(0.9, 'forse')

def test_force_callback_keeps_its_positional_order():
    cb = ForceCallback(0.9, 5, 'linear', 2, 'iter_snip')
    assert (cb.sparsity, cb.steps, cb.mode, cb.batches_per_step, cb.method) == (0.9, 5, 'linear', 2, 'iter_snip')
    with pytest.raises(TypeError): ForceCallback(0.9, 5, 'linear', 2, 'iter_snip', 'extra')

def _functions():
    for p in MODULES:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)): yield p.stem, node

def test_option_lists_are_not_written_out():
    ("No function repeats another's option list: at most 4 functions name `steps`, `bn_mode`, `loss_func` or "
     "`temperature` as a parameter (the definitions: a schedule, a tempered loss, the checks, the BatchNorm context); "
     "the others take them from a declared group (`takes`) or from another function (`like`).")
    named = {n: sorted(f"{m}.{f.name}" for m, f in _functions() if n in [a.arg for a in f.args.args + f.args.kwonlyargs])
             for n in ('steps', 'bn_mode', 'loss_func', 'temperature')}
    assert all(len(fs) <= 4 for fs in named.values()), named
    upper = {'callback', 'checkpoints', 'cli', 'demo', 'distributed', 'methods', 'models', 'options', 'records', 'sweep'}
    for n, fs in named.items():   # the entry points and everything above `methods` take no option by name
        allowed = ('methods.sparsity_schedule', 'methods.tempered_loss', 'methods.check_temperature', 'demo._steps_for',
                   'options.check_bn_mode')   # the definitions of a schedule, a tempered loss and two checks
        assert not [f for f in fs if f.split('.')[0] in upper and f not in allowed], (n, fs)

def test_no_private_method_is_patched():
    "Nothing in the library assigns to a private attribute of another object (e.g. a callback's `_prune`)."
    bad = []
    for p in MODULES:
        for node in ast.walk(ast.parse(p.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AugAssign) else []
            for t in targets:
                if (isinstance(t, ast.Attribute) and t.attr.startswith('_') and not t.attr.startswith('__')
                        and not (isinstance(t.value, ast.Name) and t.value.id in ('self', 'cls', 'ctx'))):
                    bad.append(f"{p.name}:{node.lineno} {ast.unparse(t)}")
    # the Learner's record of its mask (set by the callbacks and `load`, read by a property); fastai's own save and load,
    # kept on the functions that replace them so that a second import does not wrap them twice
    allowed = {'_pruning_masks', '_fastai_save', '_fastai_load'}
    assert [b for b in bad if b.split('.')[-1] not in allowed] == [], bad

def test_callback_module_imports_no_data_set():
    code = ("import sys; import force_edu.callback; "
            "print([m for m in ('force_edu.data', 'sklearn.datasets', 'force_edu.demo', 'force_edu.sweep') if m in sys.modules])")
    r = subprocess.run([sys.executable, '-W', 'ignore', '-c', code], capture_output=True, text=True, timeout=300)
    assert r.stdout.strip() == '[]', r.stdout + r.stderr

def test_moved_names_still_work_with_a_warning():
    import force_edu.callback as cb
    with pytest.warns(DeprecationWarning, match='force_edu.demo.run_demo'): assert cb.run_demo is run_demo
    with pytest.warns(DeprecationWarning, match='check_prune_args is deprecated'): cb.check_prune_args(0.9, steps=3)
    from force_edu.callback import masks_path, broadcast_masks   # moved, re-exported without a warning
    from force_edu.sweep import small_vgg, run_key, load_results, SWEEP_ABLATIONS, ABLATION_SEED_OFFSET   # noqa: F401
    from force_edu.sanity import erk_mask, layer_shapes   # noqa: F401
    from force_edu.sweep import LOSSES
    from force_edu.methods import METHODS, SALIENCY_LOSSES
    import force_edu.cli as cli
    assert LOSSES is SALIENCY_LOSSES
    with pytest.warns(DeprecationWarning, match='METHOD_NAMES'): assert cli.METHOD_NAMES == tuple(METHODS)
    with pytest.warns(DeprecationWarning, match='DEMO_DEFAULTS'): assert cli.DEMO_DEFAULTS['steps'] == 10
    import force_edu.speed as speed
    import torch
    with pytest.warns(DeprecationWarning): speed.topk_mask(torch.rand(5), 2)

def _code_lines(p):
    "The lines of a module that count for length and repetition: not nbdev's generated header, `__all__` or cell markers."
    lines = p.read_text().splitlines()
    start = next((i for i, l in enumerate(lines) if l.startswith('# AUTOGENERATED')), -1)
    out, in_all = [], False
    for i, l in enumerate(lines[start + 1:], start + 2):
        if l.startswith('__all__ = '): in_all = True
        if in_all:
            in_all = not l.rstrip().endswith(']'); continue
        out.append((i, l))
    return out

def test_lines_at_most_120_characters():
    long = [f"{p.name}:{i}" for p in MODULES for i, l in _code_lines(p) if len(l) > 120 and 'http' not in l]
    assert long == [], long

def test_no_block_of_six_lines_repeated():
    "No six consecutive statement lines (comments, blank lines, imports and parameter declarations left out, spaces"
    " folded) stand twice in the library. The `duplicates` tool also looks for the same shape with other names."
    import re
    param = re.compile(r"^\*{0,2}\w+(:[^=]+)?(=.+)?,$|^\)( -> .+)?:$|^[)\]}]+[,:]?$")
    seen, dup = {}, []
    for p in MODULES:
        code = [(i, ' '.join(l.split('#')[0].split())) for i, l in _code_lines(p)]
        code = [(i, l) for i, l in code if l and not l.startswith(('import ', 'from ')) and not param.match(l)]
        for j in range(len(code) - 5):
            key, where = tuple(l for _, l in code[j:j + 6]), f"{p.name}:{code[j][0]}"
            if key in seen: dup.append((seen[key], where))
            else: seen[key] = where
    assert dup == [], dup[:5]
