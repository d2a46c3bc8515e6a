"""The model zoo of the conformance run: every torchvision classification model up to a size, and five models of this
project's own that exercise what torchvision's do not (attention, recurrent layers, tied and shared parameters).

A later script prunes every `Case` here with every pruning method. Each case builds a fresh, seeded model at
initialisation (`case.build()`, `weights=None`: nothing is downloaded) and gives real-shaped random batches
(`case.batches(n)`): images are float32 `randn` of shape (bs, 3, H, W), token models get int64 ids in [0, vocab) of
shape (bs, seq_len); labels are int64 in [0, case.n_classes) (10, except `tied_embedding_lm_classifier`: 100).

- `torchvision_cases(max_params)`: one case per builder of `torchvision.models.list_models(module=torchvision.models)`
  (classification only) with at most `max_params` distinct parameters, built with `num_classes=10`;
  `torchvision_skipped(max_params)` lists the others as (name, n_params).
- `project_cases()`: the five models of this project. `all_cases(max_params)`: torchvision's, then the project's.

Inputs are as small as each model allows (32 px; see `IMAGE_SIZES` and `Case.note` for the exceptions), so that the
run is fast on a CPU. Parameter counts are those of the model as the case builds it (ViTs with `image_size=32`: their
position embedding is smaller than at 224 px); they are cached in `PARAM_COUNTS` because counting needs building each
model. They are counted on the meta device (no memory, no initialisation), except for the RegNets, which cannot be
built there (`BlockParams.from_init_params` calls `.tolist()` on a tensor the meta context creates on the meta device)
and are built on the CPU. `MEASURED_SECONDS` holds one forward + `loss.backward()` per case in train mode, batch 2.

Re-measure both (recounts every builder, verifies every case in eval and train mode, times it, prints the two dicts
to paste here; ~2-3 minutes on one core):

    OMP_NUM_THREADS=1 python benchmarks/conformance_models.py
"""
from __future__ import annotations

import math
import statistics
import time
import warnings
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

VOCAB, SEQ_LEN = 100, 16  # token models: vocabulary size and sequence length

# Image models that do not run at 32 px, with the smallest size of 32, 64, 96, ... that works.
IMAGE_SIZES = {
    'alexnet': 64,  # its third max-pool needs >= 63 px
    'inception_v3': 96,  # needs >= 75 px
    'maxvit_t': 224,  # every stage's grid (H/4 ... H/32) must be divisible by the partition size 7
}

NOTES = {
    'alexnet': 'needs >= 63 px (its last max-pool): 64 px',
    'googlenet': 'aux_logits=False, init_weights=True: one tensor out in train mode, no init warning',
    'inception_v3': 'needs >= 75 px: 96 px; aux_logits=False, init_weights=True: one tensor out, no init warning',
    'maxvit_t': 'input_size=(224, 224): each stage grid must divide by partition size 7, so H, W multiples of 224',
    'squeezenet1_0': 'head is conv + ReLU + avg-pool: logits >= 0',
    'squeezenet1_1': 'head is conv + ReLU + avg-pool: logits >= 0',
}
for _n in ('convnext_tiny', 'convnext_small', 'convnext_base', 'convnext_large'):
    NOTES[_n] = 'layer scale 1e-6 on every residual branch: the branch weights get ~1e-6 x the gradient'
for _n in ('swin_t', 'swin_s', 'swin_b', 'swin_v2_t', 'swin_v2_s', 'swin_v2_b'):
    NOTES[_n] = 'pads to its 7x7 windows: runs at 32 px (1x1 grid at the last stage)'
for _n in ('vit_b_16', 'vit_b_32', 'vit_l_16', 'vit_l_32', 'vit_h_14'):
    NOTES[_n] = ('image_size=32 (42 for vit_h_14); zero-initialised head: every gradient but the head\'s is 0 at init, '
                 'so gradient saliencies of the body are all 0')

# Distinct parameters of each torchvision builder as the cases build it (num_classes=10, weights=None, the kwargs of
# `_tv_kwargs`), printed by this file's __main__.
PARAM_COUNTS = {
    'alexnet': 57044810, 'convnext_base': 87576714, 'convnext_large': 196245706, 'convnext_small': 49462378,
    'convnext_tiny': 27827818, 'densenet121': 6964106, 'densenet161': 26494090, 'densenet169': 12501130,
    'densenet201': 18112138, 'efficientnet_b0': 4020358, 'efficientnet_b1': 6525994, 'efficientnet_b2': 7715084,
    'efficientnet_b3': 10711602, 'efficientnet_b4': 17566546, 'efficientnet_b5': 28361274, 'efficientnet_b6': 40758754,
    'efficientnet_b7': 63812570, 'efficientnet_v2_l': 117247082, 'efficientnet_v2_m': 52871166,
    'efficientnet_v2_s': 20190298, 'googlenet': 5610154, 'inception_v3': 21806058, 'maxvit_t': 30412744,
    'mnasnet0_5': 950322, 'mnasnet0_75': 1902018, 'mnasnet1_0': 3115122, 'mnasnet1_3': 5014066, 'mobilenet_v2': 2236682,
    'mobilenet_v3_large': 4214842, 'mobilenet_v3_small': 1528106, 'regnet_x_16gf': 52250026, 'regnet_x_1_6gf': 8286266,
    'regnet_x_32gf': 105315770, 'regnet_x_3_2gf': 14297642, 'regnet_x_400mf': 5098986, 'regnet_x_800mf': 6593386,
    'regnet_x_8gf': 37670858, 'regnet_y_128gf': 637493824, 'regnet_y_16gf': 80595390, 'regnet_y_1_6gf': 10322320,
    'regnet_y_32gf': 141370900, 'regnet_y_3_2gf': 17938468, 'regnet_y_400mf': 3907554, 'regnet_y_800mf': 5655362,
    'regnet_y_8gf': 37384642, 'resnet101': 42520650, 'resnet152': 58164298, 'resnet18': 11181642, 'resnet34': 21289802,
    'resnet50': 23528522, 'resnext101_32x8d': 86762826, 'resnext101_64x4d': 81426762, 'resnext50_32x4d': 23000394,
    'shufflenet_v2_x0_5': 352042, 'shufflenet_v2_x1_0': 1263854, 'shufflenet_v2_x1_5': 2488874,
    'shufflenet_v2_x2_0': 5365486, 'squeezenet1_0': 740554, 'squeezenet1_1': 727626, 'swin_b': 86753474,
    'swin_s': 48844948, 'swin_t': 27527044, 'swin_v2_b': 86916098, 'swin_v2_s': 48976132, 'swin_v2_t': 27590260,
    'vgg11': 128807306, 'vgg11_bn': 128812810, 'vgg13': 128991818, 'vgg13_bn': 128997706, 'vgg16': 134301514,
    'vgg16_bn': 134309962, 'vgg19': 139611210, 'vgg19_bn': 139622218, 'vit_b_16': 85658890, 'vit_b_32': 87426058,
    'vit_h_14': 630461450, 'vit_l_16': 303115274, 'vit_l_32': 305471498, 'wide_resnet101_2': 124858186,
    'wide_resnet50_2': 66854730,
}

# Seconds (process CPU time, one thread: the wall time on an idle core) of one forward + loss.backward() in train
# mode on batches(1) (bs=2), the median of 3 after one warm-up; printed by this file's __main__. Measured on 2 AMD EPYC
# cores, load ~3-4 from two other jobs (torch 2.14.1, torchvision 0.29.1): 9.4 s for all 68 cases; a rerun moves each
# by up to ~30%.
MEASURED_SECONDS = {
    'alexnet': 0.1908, 'convnext_base': 0.2650, 'convnext_small': 0.1594, 'convnext_tiny': 0.0872,
    'densenet121': 0.0475, 'densenet161': 0.1448, 'densenet169': 0.0647, 'densenet201': 0.0899,
    'efficientnet_b0': 0.0239, 'efficientnet_b1': 0.0348, 'efficientnet_b2': 0.0415, 'efficientnet_b3': 0.0538,
    'efficientnet_b4': 0.0751, 'efficientnet_b5': 0.1246, 'efficientnet_b6': 0.1858, 'efficientnet_b7': 0.2231,
    'efficientnet_v2_m': 0.1438, 'efficientnet_v2_s': 0.0729, 'googlenet': 0.0338, 'inception_v3': 0.0870,
    'maxvit_t': 1.2117, 'mnasnet0_5': 0.0227, 'mnasnet0_75': 0.0185, 'mnasnet1_0': 0.0236, 'mnasnet1_3': 0.0356,
    'mobilenet_v2': 0.0168, 'mobilenet_v3_large': 0.0285, 'mobilenet_v3_small': 0.0122, 'regnet_x_16gf': 0.2103,
    'regnet_x_1_6gf': 0.0481, 'regnet_x_3_2gf': 0.0785, 'regnet_x_400mf': 0.0326, 'regnet_x_800mf': 0.0324,
    'regnet_x_8gf': 0.1694, 'regnet_y_16gf': 0.3078, 'regnet_y_1_6gf': 0.0507, 'regnet_y_3_2gf': 0.0821,
    'regnet_y_400mf': 0.0250, 'regnet_y_800mf': 0.0280, 'regnet_y_8gf': 0.1386, 'resnet101': 0.2061,
    'resnet152': 0.3044, 'resnet18': 0.0303, 'resnet34': 0.0559, 'resnet50': 0.0826, 'resnext101_32x8d': 0.7497,
    'resnext101_64x4d': 0.6881, 'resnext50_32x4d': 0.1336, 'shufflenet_v2_x0_5': 0.0149, 'shufflenet_v2_x1_0': 0.0163,
    'shufflenet_v2_x1_5': 0.0256, 'shufflenet_v2_x2_0': 0.0368, 'squeezenet1_0': 0.0104, 'squeezenet1_1': 0.0086,
    'swin_b': 0.4093, 'swin_s': 0.2159, 'swin_t': 0.1249, 'swin_v2_b': 0.5187, 'swin_v2_s': 0.3271, 'swin_v2_t': 0.1676,
    'vit_b_16': 0.1903, 'vit_b_32': 0.1638, 'wide_resnet50_2': 0.2338, 'transformer_classifier': 0.0026,
    'lstm_classifier': 0.0021, 'gru_classifier': 0.0067, 'tied_embedding_lm_classifier': 0.0002,
    'shared_parameter_mlp': 0.0005,
}


@dataclass(frozen=True)
class Case:
    """One model of the conformance run: how to build it at initialisation and what to feed it."""
    name: str  # e.g. 'resnet18', 'lstm_classifier'
    source: str  # 'torchvision' or 'this project'
    kind: str  # 'image' or 'tokens'
    input_size: tuple[int, int] | int  # (H, W) for images, seq_len for tokens
    n_params: int  # distinct parameters: sum(p.numel() for p in model.parameters())
    note: str = ''  # one line on anything special
    n_classes: int = 10  # the model's outputs; labels are in [0, n_classes)
    vocab: int = 0  # token models: ids are in [0, vocab)
    make: Callable[[], nn.Module] = field(default=None, repr=False, compare=False)

    def build(self) -> nn.Module:
        "A fresh model at initialisation, the same at every call (seeded)."
        torch.manual_seed(0)
        return self.make()

    def batches(self, n: int, bs: int = 2, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        "`n` random (x, y) batches of real shape; the global RNG is left alone."
        g = torch.Generator().manual_seed(seed)
        def x():
            if self.kind == 'tokens': return torch.randint(0, self.vocab, (bs, self.input_size), generator=g)
            return torch.randn(bs, 3, *self.input_size, generator=g)
        return [(x(), torch.randint(0, self.n_classes, (bs,), generator=g)) for _ in range(n)]


# ---------------------------------------------------------------------------------------------------- torchvision

def torchvision_builders() -> list[str]:
    "Every classification builder of the installed torchvision."
    return torchvision.models.list_models(module=torchvision.models)


def _tv_size(name: str) -> int:
    if name.startswith('vit_'):  # the smallest multiple of the patch size >= 32
        patch = int(name.rsplit('_', 1)[1])
        return math.ceil(32 / patch) * patch
    return IMAGE_SIZES.get(name, 32)


def _tv_kwargs(name: str) -> dict:
    kw = dict(num_classes=10, weights=None)
    if name in ('googlenet', 'inception_v3'): kw.update(aux_logits=False, init_weights=True)
    if name.startswith('vit_'): kw.update(image_size=_tv_size(name))
    if name == 'maxvit_t': kw.update(input_size=(_tv_size(name),) * 2)
    return kw


def _tv_make(name: str) -> Callable[[], nn.Module]:
    return partial(torchvision.models.get_model, name, **_tv_kwargs(name))


def count_params(make: Callable[[], nn.Module]) -> int:
    "Distinct parameters of `make()`, built on the meta device where it can be, else on the CPU."
    try:
        with torch.device('meta'): model = make()
    except NotImplementedError:  # RegNet: .tolist() of a meta tensor
        with torch.random.fork_rng(): model = make()
    return sum(p.numel() for p in model.parameters())


def _tv_count(name: str) -> int:
    return PARAM_COUNTS[name] if name in PARAM_COUNTS else count_params(_tv_make(name))


def torchvision_cases(max_params: int = 100_000_000) -> list[Case]:
    "One case per torchvision classification builder with at most `max_params` parameters."
    cases = []
    for name in torchvision_builders():
        n = _tv_count(name)
        if n > max_params: continue
        s = _tv_size(name)
        cases.append(Case(name, 'torchvision', 'image', (s, s), n, NOTES.get(name, ''), make=_tv_make(name)))
    return cases


def torchvision_skipped(max_params: int = 100_000_000) -> list[tuple[str, int]]:
    "(name, n_params) of the builders `torchvision_cases(max_params)` leaves out."
    return [(name, n) for name in torchvision_builders() if (n := _tv_count(name)) > max_params]


# ---------------------------------------------------------------------------------------------------- this project

class TransformerClassifier(nn.Module):
    "Token ids -> embedding + learned positions -> 2 Transformer encoder layers -> mean over tokens -> linear."
    def __init__(self, vocab=VOCAB, seq_len=SEQ_LEN, d=32, n_classes=10):
        super().__init__()
        self.embedding = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(0.02 * torch.randn(1, seq_len, d))
        layer = nn.TransformerEncoderLayer(d_model=d, nhead=4, dim_feedforward=64, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(d, n_classes)

    def forward(self, x):
        return self.head(self.encoder(self.embedding(x) + self.pos[:, :x.shape[1]]).mean(1))


class RecurrentClassifier(nn.Module):
    "Token ids -> embedding -> `rnn` (LSTM or GRU) -> the last layer's final hidden state(s) -> linear."
    def __init__(self, rnn: nn.RNNBase, vocab=VOCAB, n_classes=10):
        super().__init__()
        self.embedding = nn.Embedding(vocab, rnn.input_size)
        self.rnn = rnn
        self.n_dir = 2 if rnn.bidirectional else 1
        self.head = nn.Linear(self.n_dir * rnn.hidden_size, n_classes)

    def forward(self, x):
        _, h = self.rnn(self.embedding(x))
        if isinstance(h, tuple): h = h[0]  # LSTM: (h, c)
        return self.head(torch.cat(list(h[-self.n_dir:]), dim=1))  # both directions of the last layer


class TiedEmbeddingClassifier(nn.Module):
    "Token ids -> embedding -> mean -> linear + ReLU -> a decoder whose weight IS the embedding's: logits over vocab."
    def __init__(self, vocab=VOCAB, d=32):
        super().__init__()
        self.embedding = nn.Embedding(vocab, d)
        self.hidden = nn.Linear(d, d)
        self.decoder = nn.Linear(d, vocab, bias=False)
        self.decoder.weight = self.embedding.weight  # tied: one Parameter, (vocab, d)

    def forward(self, x):
        return self.decoder(F.relu(self.hidden(self.embedding(x).mean(1))))


class SharedParameterMLP(nn.Module):
    "Flattened image -> linear -> ReLU -> `a` -> ReLU -> `b` (b.weight IS a.weight, biases separate) -> ReLU -> linear."
    def __init__(self, in_features=3 * 32 * 32, d=64, n_classes=10):
        super().__init__()
        self.inp = nn.Linear(in_features, d)
        self.a, self.b = nn.Linear(d, d), nn.Linear(d, d)
        self.b.weight = self.a.weight  # one Parameter used by two modules
        self.head = nn.Linear(d, n_classes)

    def forward(self, x):
        x = F.relu(self.inp(x.flatten(1)))
        return self.head(F.relu(self.b(F.relu(self.a(x)))))


def project_cases() -> list[Case]:
    "The five models of this project."
    tok = dict(source='this project', kind='tokens', input_size=SEQ_LEN, vocab=VOCAB)
    specs = [
        ('transformer_classifier', TransformerClassifier, tok,
         'attention weights are raw Parameters of nn.MultiheadAttention (in_proj_weight); its out_proj, an nn.Linear, '
         'is used through F.multi_head_attention_forward, not its own forward'),
        ('lstm_classifier', lambda: RecurrentClassifier(nn.LSTM(32, 64, num_layers=2, batch_first=True)), tok,
         'recurrent weights are Parameters of nn.LSTM (weight_ih_l*, weight_hh_l*, 2 biases a layer), no nn.Linear'),
        ('gru_classifier',
         lambda: RecurrentClassifier(nn.GRU(32, 64, num_layers=1, batch_first=True, bidirectional=True)), tok,
         'bidirectional nn.GRU (weight_*_l0 and weight_*_l0_reverse); head on both final states'),
        ('tied_embedding_lm_classifier', TiedEmbeddingClassifier, dict(tok, n_classes=VOCAB),
         'decoder.weight is embedding.weight (listed once, as embedding.weight); 100 classes: labels in [0, 100)'),
        ('shared_parameter_mlp', SharedParameterMLP,
         dict(source='this project', kind='image', input_size=(32, 32)),
         'b.weight is a.weight: one Parameter in two modules (listed once, as a.weight), applied twice'),
    ]
    return [Case(name, n_params=count_params(make), note=note, make=make, **kw) for name, make, kw, note in specs]


def all_cases(max_params: int = 100_000_000) -> list[Case]:
    "torchvision's cases, then the project's."
    return torchvision_cases(max_params) + project_cases()


# ---------------------------------------------------------------------------------------------------- re-measuring

def verify(case: Case, repeats: int = 3) -> dict:
    "Build `case`, check one forward in eval and in train mode and one backward; time forward + backward in train mode."
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        model = case.build()
    n = sum(p.numel() for p in model.parameters())
    assert n == case.n_params, (case.name, n, case.n_params)
    x, y = case.batches(1)[0]
    model.eval()
    with torch.no_grad(): out = model(x)
    model.train()
    out_train = model(x)
    for o in (out, out_train):
        assert isinstance(o, torch.Tensor) and o.dtype == torch.float32, (case.name, type(o))
        assert o.shape == (x.shape[0], case.n_classes), (case.name, o.shape)
    F.cross_entropy(out_train, y).backward()  # also the warm-up of the timing
    assert all(p.grad is not None for p in model.parameters()), case.name
    cpu, wall = [], []
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        c, w = time.process_time(), time.perf_counter()
        F.cross_entropy(model(x), y).backward()
        cpu.append(time.process_time() - c), wall.append(time.perf_counter() - w)
    # weights (not biases) that are all zero at initialisation, or all tiny (layer scales)
    zero = [k for k, p in model.named_parameters() if not k.endswith('bias') and p.abs().max() < 1e-4]
    return dict(cpu=statistics.median(cpu), wall=statistics.median(wall), zero=zero,
                warnings=sorted({str(w.message)[:80] for w in caught}))


def _dict_literal(name: str, d: dict, fmt: str) -> str:
    items = [f"'{k}': {format(v, fmt)}," for k, v in d.items()]
    lines, line = [], '   '
    for it in items:
        if len(line) + 1 + len(it) > 120: lines.append(line); line = '   '
        line += ' ' + it
    return '\n'.join([f'{name} = {{'] + lines + [line, '}'])


def main():
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    counts = {name: count_params(_tv_make(name)) for name in torchvision_builders()}
    print(f'counted {len(counts)} builders in {time.perf_counter() - t0:.1f} s;',
          'PARAM_COUNTS is up to date' if counts == PARAM_COUNTS else 'PARAM_COUNTS differs: paste the one below')
    PARAM_COUNTS.clear(), PARAM_COUNTS.update(counts)
    cases = all_cases()
    print(f"\n{'case':<30}{'source':>13}{'params':>13}{'input':>10}{'fwd+bwd s':>10}{'wall s':>8}  note / flags")
    seconds, total = {}, 0.0
    for case in cases:
        r = verify(case)
        seconds[case.name] = r['cpu']
        total += r['cpu']
        size = 'x'.join(map(str, case.input_size)) if case.kind == 'image' else f'{case.input_size} tok'
        flags = '; '.join([case.note] * bool(case.note) + [f"~0 at init: {', '.join(r['zero'][:3])}"] * bool(r['zero'])
                          + [f"warnings: {r['warnings']}"] * bool(r['warnings']))
        print(f"{case.name:<30}{case.source:>13}{case.n_params:>13,}{size:>10}{r['cpu']:>10.3f}{r['wall']:>8.3f}",
              flags, flush=True)
    print(f'\n{len(cases)} cases verified; forward + backward: {total:.1f} s in all (CPU, one thread)')
    print('skipped (> 100M parameters):', ', '.join(f'{n} ({p / 1e6:.1f}M)' for n, p in torchvision_skipped()))
    print(f'total {time.perf_counter() - t0:.0f} s\n')
    print(_dict_literal('PARAM_COUNTS', counts, 'd'))
    print(_dict_literal('MEASURED_SECONDS', seconds, '.4f'))


if __name__ == '__main__':
    main()
