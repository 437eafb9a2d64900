"""Base weights in the dtype users run, quantized (bitsandbytes) and device-mapped (accelerate) bases, on the CPU.

References: the same bench loaded in float32 on one device (a dense recomputation of the same merge), and PEFT
itself on the same bf16 / quantized base (the ecosystem's LoRA layers for Linear4bit / Linear8bitLt).
"""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import pytest
import torch
from conftest import randomize_lora
from test_verbalizer import TINY, tasks

from mergecore.adapters import load_adapters
from mergecore.errors import MergecoreError
from mergecore.forward.workbench import open_workbench
from mergecore.learn.learner import Learner
from mergecore.learn.params import LearnParams
from mergecore.placement import LoadParams, device_map_arg, pretrained_kwargs, torch_dtype

pytestmark = [pytest.mark.skipif(not TINY.is_dir(), reason="tiny-random checkpoints not found in /work/shared/data"),
              pytest.mark.usefixtures("one_thread")]
QUIET = pytest.mark.filterwarnings("ignore")  # bitsandbytes / accelerate warn about CPU kernels and offloading


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return small_llama(tmp_path_factory.mktemp("placement"))


def small_llama(root):
    """Two PEFT adapters (r=2 on q_proj, v_proj) on a small random Llama saved as ``root/base``: 64 wide, as
    bitsandbytes' CPU kernels need widths in multiples of their blocks; weights scaled so distributions are peaked."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(7)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(20.0)
    model.save_pretrained(root / "base")
    AutoTokenizer.from_pretrained(TINY / "llama").save_pretrained(root / "base")
    dirs = []
    for i in range(2):
        torch.manual_seed(10 + i)
        pm = get_peft_model(LlamaForCausalLM.from_pretrained(root / "base"),
                            LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
        randomize_lora(pm, 0.5)
        pm.save_pretrained(root / f"llama_{i}")
        dirs.append(root / f"llama_{i}")
    return dirs


def base_of(dirs):
    return dirs[0].parent / "base"


def bench(dirs, **load):
    return open_workbench(load_adapters(dirs), tasks(), device="cpu", base_model=str(base_of(dirs)),
                          load=LoadParams(**load))


def probs(b, source):
    return [p for p in b.predict(source, "calibration") if p is not None]


def close(a, b, atol):
    return all(torch.allclose(x, y, atol=atol) for x, y in zip(a, b))


# ----------------------------------------------------------------------------- params


@pytest.mark.parametrize("load, message", [
    ({"dtype": "fp8"}, "unknown dtype 'fp8'; valid: auto, float32, bfloat16, float16"),
    ({"quantize": "nf3"}, "unknown quantization 'nf3'; valid: nf4, int8 (or none)"),
    ({"device_map": "everywhere"}, "device map 'everywhere' is neither auto, balanced nor a JSON file; "
                                   "give --device-map auto|balanced|FILE.json"),
])
def test_bad_load_params_are_one_line(load, message):
    with pytest.raises(MergecoreError) as info:
        LoadParams(**load).validate()
    assert str(info.value) == message


def test_device_map_files(tmp_path):
    good, bad, wrong = tmp_path / "map.json", tmp_path / "bad.json", tmp_path / "list.json"
    good.write_text(json.dumps({"model.layers.0": "cpu", "lm_head": 0}))
    bad.write_text("{not json")
    wrong.write_text("[1, 2]")
    assert device_map_arg(str(good)) == {"model.layers.0": "cpu", "lm_head": 0}
    assert device_map_arg("auto") == "auto" and device_map_arg("balanced") == "balanced"
    with pytest.raises(MergecoreError, match="is not valid JSON"):
        device_map_arg(str(bad))
    with pytest.raises(MergecoreError) as info:
        device_map_arg(str(wrong))
    assert str(info.value) == (f"device map {wrong} must be a JSON object {{\"module\": \"device\"}} "
                               "(devices: \"cpu\", \"cuda:0\", 0, \"disk\")")


def test_auto_dtype_is_the_checkpoints_on_cuda_and_float32_on_cpu():
    from transformers import LlamaConfig

    bf16, unnamed = LlamaConfig(dtype="bfloat16"), LlamaConfig()
    unnamed.dtype = None
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert torch_dtype("auto", bf16, cpu) == torch.float32
    assert torch_dtype("auto", bf16, cuda) == torch.bfloat16
    assert torch_dtype("auto", SimpleNamespace(dtype="float16"), cuda) == torch.float16  # a config.json string
    assert torch_dtype("auto", SimpleNamespace(dtype="int8"), cuda) == torch.float32  # not a weights dtype
    assert torch_dtype("auto", SimpleNamespace(), cuda) == torch.float32  # a config naming no dtype
    assert torch_dtype("auto", unnamed, cuda) == torch.float32
    assert torch_dtype("float16", unnamed, cpu) == torch.float16


def test_pretrained_kwargs():
    from transformers import LlamaConfig

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert pretrained_kwargs(LoadParams(), LlamaConfig(), cpu, []) == {"dtype": "float32"}
    assert pretrained_kwargs(LoadParams(), LlamaConfig(dtype="bfloat16"), cuda, []) == {"dtype": "bfloat16"}
    kw = pretrained_kwargs(LoadParams(dtype="bfloat16", quantize="nf4"), LlamaConfig(), cpu, ["classifier"])
    q = kw["quantization_config"]
    assert kw["device_map"] == {"": "cpu"} and kw["dtype"] == "bfloat16"
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_compute_dtype == torch.bfloat16
    assert q.bnb_4bit_use_double_quant and q.llm_int8_skip_modules == ["classifier"]  # QLoRA's double quantization
    q8 = pretrained_kwargs(LoadParams(quantize="int8"), LlamaConfig(), cpu, ["classifier"])["quantization_config"]
    assert q8.load_in_8bit and q8.llm_int8_skip_modules == ["classifier"]
    compute = {d.type: pretrained_kwargs(LoadParams(dtype="float32", quantize="nf4"), LlamaConfig(), d, [])
               ["quantization_config"].bnb_4bit_compute_dtype for d in (cpu, cuda)}
    assert compute == {"cpu": torch.float32, "cuda": torch.bfloat16}  # a float32 4-bit base computes in bf16 on GPUs
    kw = pretrained_kwargs(LoadParams(device_map="balanced"), LlamaConfig(), cpu, [])
    assert kw == {"dtype": "float32", "device_map": "balanced"}


# ----------------------------------------------------------------------------- bf16 weights


def test_bf16_base_runs_the_lora_path_in_float32(llama):
    f32, b16 = bench(llama), bench(llama, dtype="bfloat16")
    assert b16.model.model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    layer = b16.model.layers[0]
    assert layer.base.weight.dtype == torch.bfloat16 and layer.A_cat.dtype == layer.B_cat.dtype == torch.float32
    for source in (b16.uniform(), b16.routing(), b16.pretrained()):
        assert close(probs(b16, source), probs(f32, source), atol=0.03)
    assert all(p.dtype == torch.float32 for p in probs(b16, b16.uniform()))


def test_bf16_classifier_heads_follow_the_base(tiny_setup):
    from test_learn import tiny_bench

    ref = tiny_bench(tiny_setup)
    base_dir, dirs = tiny_setup
    b16 = open_workbench(load_adapters(dirs), ref.tasks, device="cpu", base_model=str(base_dir),
                         load=LoadParams(dtype="bfloat16"))
    head = b16.model.model.classifier.heads[0]
    assert head.weight.dtype == torch.bfloat16
    assert close(probs(b16, b16.routing()), probs(ref, ref.routing()), atol=0.03)


def test_bf16_expert_matches_peft_on_the_same_bf16_base(llama):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    b16 = bench(llama, dtype="bfloat16")
    ids = torch.tensor([[1, 5, 9, 14, 3, 7]])
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_of(llama), dtype=torch.bfloat16),
                                     str(llama[1])).eval()
    b16.model.set_source(b16.expert(1))
    with torch.no_grad():
        ours = b16.model(_segments(1), input_ids=ids).logits
        theirs = peft(input_ids=ids).logits
    with torch.no_grad(), peft.disable_adapter():
        plain = peft(input_ids=ids).logits
    assert ours.dtype == theirs.dtype == torch.bfloat16
    assert torch.equal(ours, theirs)  # float32 LoRA path, the sum rounded to bf16 once: PEFT's arithmetic
    assert (theirs.float() - plain.float()).abs().max() > 1.0  # and the adapter matters


def _segments(n):
    from mergecore.forward.model import Segments

    return Segments([(0, 0, n)])


def test_bf16_learning_keeps_coefficients_and_losses_float32(llama):
    b16 = bench(llama, dtype="bfloat16")
    learner = Learner(b16, LearnParams(steps=3, lr=0.05, batch_size=2, samples=6, eval_every=2, eval_limit=4))
    events = []
    res = learner.run(lambda kind, step, payload: events.append((kind, payload)))
    assert res.status == "done" and res.coefs.dtype == torch.float32
    assert learner.source.gamma.dtype == torch.float32 and not torch.equal(res.coefs, torch.full_like(res.coefs, 0.5))
    steps = [p for kind, p in events if kind == "step"]
    assert len(steps) == 3 and all(torch.isfinite(torch.tensor(p["loss"])) for p in steps)
    assert any(kind == "eval" for kind, _ in events)


def test_bf16_stage1_references_are_float32_and_near_the_float32_experts(llama):
    from mergecore.learn.learner import references

    params = LearnParams(samples=6)
    got = {}
    for name, b in (("f32", bench(llama)), ("b16", bench(llama, dtype="bfloat16"))):
        refs = references(b, params)
        refs.fill([(k, b.encoded(k, "calibration", limit=6), torch.arange(6)) for k in b.label_tasks], b.uniform())
        got[name] = [refs[k] for k in b.label_tasks]
    assert all(r.dtype == torch.float32 for r in got["b16"])
    assert close(got["b16"], got["f32"], atol=0.03)


# ----------------------------------------------------------------------------- quantized bases (bitsandbytes CPU)


@QUIET
@pytest.mark.parametrize("kind, layer_type", [("nf4", "Linear4bit"), ("int8", "Linear8bitLt")])
def test_quantized_base_matches_peft_on_the_same_quantized_base(llama, kind, layer_type):
    pytest.importorskip("bitsandbytes")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    q = bench(llama, quantize=kind)
    layer = q.model.layers[0]
    assert type(layer.base).__name__ == layer_type and layer.A_cat.dtype == torch.float32
    kw = pretrained_kwargs(LoadParams(quantize=kind), None, torch.device("cpu"), [])
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_of(llama), **kw), str(llama[0])).eval()
    ids = torch.tensor([[2, 4, 8, 16, 3]])
    q.model.set_source(q.expert(0))
    with torch.no_grad():
        ours, theirs = q.model(_segments(1), input_ids=ids).logits, peft(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert close(probs(q, q.uniform()), probs(bench(llama), q.uniform()), atol=0.05)
    res = Learner(q, LearnParams(steps=2, batch_size=2, samples=4, eval_every=0)).run()
    assert res.status == "done" and torch.isfinite(res.coefs).all()


def test_quantize_without_bitsandbytes_is_one_line(monkeypatch, llama):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(MergecoreError, match=r"^quantizing the base \(nf4\) needs bitsandbytes; pip install bitsandbytes$"):
        bench(llama, quantize="nf4")


# ----------------------------------------------------------------------------- device maps (accelerate)


@QUIET
def test_device_map_with_a_disk_offloaded_block_matches_one_device(llama, tmp_path):
    mapping = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
               "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    (tmp_path / "map.json").write_text(json.dumps(mapping))
    ref, mapped = bench(llama), bench(llama, device_map=str(tmp_path / "map.json"))
    offloaded = [layer for layer in mapped.model.layers if ".layers.1." in layer.name]
    assert offloaded and all(layer.base.weight.device.type == "meta" for layer in offloaded)
    assert all(layer.A_cat.device.type == "cpu" for layer in mapped.model.layers) and mapped.device.type == "cpu"
    for source in (ref.uniform(), ref.routing()):
        assert close(probs(mapped, source), probs(ref, source), atol=1e-5)
    params = LearnParams(steps=3, lr=0.05, batch_size=2, samples=6, eval_every=0)
    torch.testing.assert_close(Learner(mapped, params).run().coefs, Learner(ref, params).run().coefs, atol=1e-5, rtol=0)


@QUIET
@pytest.mark.parametrize("device_map", ["auto", "balanced"])
def test_auto_device_maps_on_a_cpu_only_machine(llama, device_map):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mapped = bench(llama, device_map=device_map)
    assert {layer.A_cat.device.type for layer in mapped.model.layers} == {"cpu"}
    ref = bench(llama)
    assert close(probs(mapped, ref.uniform()), probs(ref, ref.uniform()), atol=1e-5)


# ----------------------------------------------------------------------------- command line


def test_cli_learns_on_a_bf16_demo_base_and_records_it(tmp_path, capsys):
    import argparse

    from mergecore.cli import main
    from mergecore.cli.common import add_source_args, run_spec
    from mergecore.forward.spec import RunSpec
    from mergecore.runs.store import RunStore

    argv = ["learn", "--demo", "--dtype", "bfloat16", "--steps", "2", "--samples", "4", "--batch-size", "2",
            "--eval-every", "0", "--workspace", str(tmp_path), "--json"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    store = RunStore(tmp_path)
    assert store.get(out["run_id"]).config["load"] == {"dtype": "bfloat16", "quantize": None, "device_map": None}
    parser = argparse.ArgumentParser()
    add_source_args(parser)
    recorded = RunSpec.from_record(store.get(out["run_id"]).config)
    spec = run_spec(parser.parse_args(["--demo"]), recorded)  # commands taking --run reopen the base as the run loaded it
    assert spec.load == LoadParams("bfloat16", None, None)
    assert run_spec(parser.parse_args(["--demo", "--dtype", "float32"]), recorded).load.dtype == "float32"  # flags win
    with pytest.raises(SystemExit) as exc:  # the adapters are float32 whatever the base held: exported as always
        main(["export", "--run", out["run_id"], "--workspace", str(tmp_path), "--out", str(tmp_path / "merged")])
    assert exc.value.code == 0
    from safetensors.torch import load_file

    tensors = load_file(tmp_path / "merged" / "adapter_model.safetensors")
    assert tensors and all(t.dtype == torch.float32 for t in tensors.values())


@pytest.mark.parametrize("flag, value, message", [("--dtype", "fp8", "argument --dtype: invalid choice: 'fp8'"),
                                                  ("--quantize", "nf3", "argument --quantize: invalid choice: 'nf3'"),
                                                  ("--device-map", "nowhere.json", "device map 'nowhere.json'")])
def test_cli_refuses_bad_load_flags_with_exit_2(tmp_path, capsys, flag, value, message):
    from mergecore.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["eval", "--demo", flag, value, "--workspace", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and message in err[-1]
    assert flag == "--dtype" or len(err) == 1  # argparse prints its usage above a bad choice


@QUIET
def test_every_lens_reads_the_same_from_a_device_mapped_base(llama, tmp_path):
    from test_lenses_families import PARAMS

    from mergecore.analysis.catalog import LENSES, compute_lens, headline
    from mergecore.runs.store import RunStore

    mapping = {"model.embed_tokens": "cpu", "model.layers.0": "disk", "model.layers.1": "cpu", "model.norm": "cpu",
               "model.rotary_emb": "cpu", "lm_head": "cpu"}
    (tmp_path / "map.json").write_text(json.dumps(mapping))
    ref, mapped = bench(llama), bench(llama, device_map=str(tmp_path / "map.json"))
    store = RunStore(tmp_path / "ws")
    run_id = store.create("mixed", "learned", {"method": "learned"})
    store.put_tensors(run_id, "coefs", {"coefs": torch.tensor([[0.7, 0.2]]).repeat(ref.num_modules, 1)})
    store.finish(run_id, "done", {})
    for what in LENSES:
        want, got = compute_lens(what, ref, store, run_id, PARAMS), compute_lens(what, mapped, store, run_id, PARAMS)
        assert headline(what, got) == headline(what, want), what
        a, b = torch.tensor(_numbers(want), dtype=torch.float64), torch.tensor(_numbers(got), dtype=torch.float64)
        assert len(a) > 3 and torch.isfinite(a).sum() > 3, what  # numbers to compare, not only undefined ones
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5, equal_nan=True, msg=what)


def _numbers(obj) -> list[float]:
    """Every number in a lens result (dicts, lists, tensors), in order."""
    if isinstance(obj, torch.Tensor):
        return obj.double().flatten().tolist()
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return []
    if isinstance(obj, (int, float)):
        return [float(obj)]
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else []
    return [x for item in items for x in _numbers(item)]


def test_the_tokenizer_is_loaded_without_the_weights_arguments(llama, tmp_path):
    """from_pretrained's dtype / device map are the model's: a tokenizer keeps unknown arguments in its
    init_kwargs and writes them into tokenizer_config.json (a full-weights export saves the tokenizer)."""
    from mergecore.bases import load_base

    _, tok, _ = load_base(str(base_of(llama)), load=LoadParams(dtype="bfloat16", device_map="auto"))
    tok.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert not {"dtype", "device_map", "quantization_config"} & (set(saved) | set(tok.init_kwargs))
