"""PEFT is the oracle: adapters saved by real PEFT, for every LoraConfig field that changes the forward
and every model family, either merge exactly or are refused in one line naming the field.

Exact means both:
  1. mergecore's routed expert k equals PEFT's single-adapter model (max relative error <= 1e-5);
  2. a task arithmetic merge with one weight per adapter, exported by mergecore and loaded by plain
     PEFT (on the task model class and on the bare model class), equals
     W0 + sum_k w_k (merge_and_unload(adapter k) - W0) computed by PEFT itself.
Refused means: loading raises one line naming the field, and the CLI exits 2 with that line.
The session writes docs/peft-conformance.md from the outcomes (see conftest.py).
"""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from conftest import randomize_lora

from conformance import families
from conformance.cases import CASES, Case
from conformance.families import FAMILIES, Family, inputs, load, save_base
from mergecore.adapters import load_adapters
from mergecore.errors import MergecoreError
from mergecore.export.peft import exact_factors, write_adapter
from mergecore.forward.coefs import RowRouting
from mergecore.forward.model import MergeModel, Segments
from mergecore.merges import merge_adapters

WEIGHTS = [0.7, -0.4]
LABELS = [2, 3]  # classifier heads of different widths
TOL = 1e-5


@pytest.fixture(scope="session")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("peft-bases")
    return {name: save_base(f, root / name) for name, f in FAMILIES.items()}


def _modules(family: Family, base) -> list[str]:
    return [n for n, _ in families._loaded(family.name, str(base), LABELS[0] if family.classifier else None,
                                            "task").named_modules()]


def make_adapters(family: Family, base, case: Case, root) -> list:
    from peft import LoraConfig, get_peft_model

    configs = case.configs(family, _modules(family, base))
    dirs = []
    for k, kw in enumerate(configs):
        torch.manual_seed(100 + k)
        cfg = LoraConfig(task_type=family.task_type, **{**family.lora, **kw})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pm = get_peft_model(load(family, base, LABELS[k]), cfg)
        randomize_lora(pm, family.lora_std)
        pm.save_pretrained(root / f"a{k}")
        dirs.append(root / f"a{k}")
    if case.drop:
        f = dirs[0] / "adapter_config.json"
        f.write_text(json.dumps({k: v for k, v in json.loads(f.read_text()).items() if k not in case.drop}))
    return dirs


def _rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-12))


def peft_model(family: Family, base, adapter, num_labels: int | None = None, which: str = "task"):
    """PEFT's own model; on a bare language model without the task type (PEFT's CAUSAL_LM / SEQ_2_SEQ_LM
    wrappers need the LM head the bare class lacks)."""
    from peft import PeftConfig, PeftModel

    config = PeftConfig.from_pretrained(str(adapter))
    if which == "bare" and not family.classifier:
        config.task_type = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PeftModel.from_pretrained(load(family, base, num_labels, which), str(adapter), config=config).eval()


@torch.no_grad()
def routed_error(family: Family, mm: MergeModel, experts: list) -> float:
    """Max over experts of the relative error of routed expert k against PEFT with adapter k alone."""
    per = [inputs(family, 3, seed=k) for k in range(len(experts))]
    batch = {key: torch.cat([p[key] for p in per]) for key in per[0]}
    mm.set_source(RowRouting(mm.slot, len(experts)))
    routed = mm(Segments([(k, 3 * k, 3 * k + 3) for k in range(len(experts))]), **batch).logits
    errors = []
    for k, expert in enumerate(experts):
        ref = expert(**per[k]).logits
        errors.append(_rel(routed[3 * k:3 * k + 3, ..., :ref.shape[-1]], ref))
    return max(errors)


def _merged_state(model) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {k: v.double() for k, v in model.merge_and_unload().state_dict().items()}


@torch.no_grad()
def export_error(family: Family, base, experts: list, adapters, out, classes=("task",)) -> dict[str, float]:
    """Relative error of the exported merge against PEFT's own weighted sum of merged deltas,
    loaded on each model class of ``classes`` ("task", "bare")."""
    merge = merge_adapters(adapters, "task_arithmetic", weights=WEIGHTS)
    out.mkdir()
    write_adapter(out, adapters, exact_factors(merge), dict(adapters.adapters[0].extra), "")
    w0 = {k: v.double() for k, v in load(family, base, LABELS[0]).state_dict().items()}
    merged = [_merged_state(e) for e in experts]
    heads = tuple(h + "." for a in adapters.adapters for h in a.head_modules)
    ref = {k: w0[k] + sum(w * (e[k] - w0[k]) for w, e in zip(WEIGHTS, merged))
           for k in w0 if not k.startswith(heads)}
    errors = {}
    for which in classes:
        ours = _merged_state(peft_model(family, base, out, LABELS[0], which))
        prefix = "" if which == "task" else _bare_prefix(family, base)
        pairs = [(ours[k[len(prefix):]], v, w0[k]) for k, v in ref.items()
                 if k.startswith(prefix) and k[len(prefix):] in ours]
        assert pairs, f"the export loaded on the {which} class shares no weights with the reference"
        scale = max(float((v - w).abs().max()) for _, v, w in pairs)
        errors[which] = max(float((o - v).abs().max()) for o, v, _ in pairs) / max(scale, 1e-12)
    return errors


def _bare_prefix(family: Family, base) -> str:
    model = load(family, base, LABELS[0])
    prefix = getattr(model, "base_model_prefix", "")
    return prefix + "." if prefix and hasattr(model, prefix) else ""


def open_merge_model(family: Family, base, dirs) -> MergeModel | str:
    """mergecore's merge model of the adapters, or the one-line refusal of loading them."""
    try:
        adapters = load_adapters(dirs)
        return MergeModel(load(family, base, LABELS[0]), adapters, with_heads=family.classifier)
    except MergecoreError as exc:
        return str(exc)


def cli_refusal(dirs, base, capsys) -> tuple[int, str]:
    from mergecore.cli import main

    capsys.readouterr()  # drop what the test's own model loading printed
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--adapters", *map(str, dirs), "--base-path", str(base)])
    return exit_info.value.code, capsys.readouterr().err.strip()


CELLS = [(c, f) for c in CASES for f in FAMILIES.values() if c.applies(f)]


@pytest.mark.parametrize("case,family", CELLS, ids=[f"{f.name}-{c.name}" for c, f in CELLS])
def test_exact_or_refused(case, family, bases, tmp_path, capsys, conformance):
    base = bases[family.name]
    dirs = make_adapters(family, base, case, tmp_path)
    expected = case.expect(family)
    mm = open_merge_model(family, base, dirs)
    if expected != "exact":
        assert isinstance(mm, str), f"expected a refusal naming {expected}, but the adapters loaded"
        assert expected in mm and "\n" not in mm, mm
        code, err = cli_refusal(dirs, base, capsys)
        assert code == 2 and err.count("\n") == 0 and expected in err, (code, err)
        conformance.record(case.name, family.name, "refused", mm)
        return
    assert not isinstance(mm, str), f"expected an exact merge, got a refusal: {mm}"
    experts = [peft_model(family, base, d, LABELS[k]) for k, d in enumerate(dirs)]
    routed = routed_error(family, mm, experts)
    classes = ("task", "bare") if case is CASES[0] or "all-linear" in case.name else ("task",)
    exported = export_error(family, base, experts, mm.adapters, tmp_path / "export", classes)
    assert routed <= TOL, f"routed expert differs from PEFT's single-adapter model: {routed:.2e}"
    assert exported["task"] <= TOL, f"exported merge differs from PEFT's weighted deltas: {exported}"
    assert exported.get("bare", 0.0) <= TOL, f"exported merge on the bare model differs: {exported}"
    worst = max(routed, *exported.values(), 1e-12)
    conformance.record(case.name, family.name, "exact", f"< 1e{math.ceil(math.log10(worst))}")  # a stable bound
