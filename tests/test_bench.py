"""`make bench` (benchmarks/bench.py --quick) produces every section of its JSON with the machine it ran on,
and the GPU benchmark says why it measures nothing where no GPU is at hand. No timing assertions."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _env(tmp_path):
    return dict(os.environ, WANDB_MODE="offline", HF_HUB_OFFLINE="1", HPE_BENCH_CACHE=str(tmp_path / "cache"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message printed without a GPU")
def test_gpu_benchmark_explains_missing_gpu(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/bench_gpu.py"], cwd=ROOT, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no CUDA GPU" in proc.stdout


@pytest.mark.slow
def test_bench_quick_reports_every_section(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "benchmarks/bench.py", "--quick", "--json", str(out)], cwd=ROOT,
                          env=_env(tmp_path), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    record = json.loads(out.read_text())
    assert {"cpu", "threads", "torch"} <= set(record["machine"])
    assert record["synthetic"]["images_per_s"] > 0 and record["loader"]["samples_per_s"] > 0
    opnet = record["models"]["opnet"]
    assert all(v > 0 for k, v in opnet["train_step"].items() if k != "batch")
    assert opnet["train_pipeline"]["img_per_s"] > 0
    # trainer=fast's precision for the model, measured here (bf16 offered only with native bfloat16)
    choice = opnet["train_pipeline_fast"]["precision_choice"]
    assert choice["precision"] == opnet["train_pipeline_fast"]["precision"] in ("32-true", "bf16-mixed")
    if "bf16-mixed" in choice["candidates"]:
        assert choice["ratio_vs_fp32"]["bf16-mixed"] > 0 and choice["source"] == "measured"
    assert "trainer=fast precision" in proc.stdout and f"-> {choice['precision']}" in proc.stdout
    assert {"eager_ms", "onnx_fp32_ms", "onnx_int8_ms"} <= set(opnet["inference_batch1"])
    change = opnet["inference_batch1"]["int8_accuracy_change"]
    assert change["num_samples"] == 8 and 0 <= change["mae_r_deg"] < 90  # one test batch of 8, int8 vs float32
    assert "int8/fp32" in proc.stdout  # the table
