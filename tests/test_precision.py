"""``trainer=fast`` on a CPU chooses its precision by timing the run's own training step (hpe_bench/precision.py).
Timings are injected wherever a decision is asserted, so these tests give the same answers on CPUs with AMX,
with AVX512-BF16 only, and with neither; the end-to-end test asserts only what holds on any CPU."""
import json
from contextlib import contextmanager

import pytest
import torch

from hpe_bench import hardware
from hpe_bench import precision as P

REAL_CPU_CONTENTION = P.cpu_contention  # before idle_machine replaces it


@pytest.fixture(autouse=True)
def idle_machine(monkeypatch):
    """Whatever else runs beside the tests, the measurements here count as made on an idle machine."""
    load = {"elsewhere": 0.0, "own_utilisation": 1.0, "contended": False}

    @contextmanager
    def fake():
        yield dict(load)

    monkeypatch.setattr(P, "cpu_contention", fake)
    return load


AMX = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"}
AVX512_BF16_ONLY = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}
NEITHER = {"avx2", "avx512f", "avx512_vnni"}


def test_choose_precision_keeps_float32_unless_bf16_is_clearly_faster():
    assert P.choose_precision({"32-true": 100.0, "bf16-mixed": 200.0}) == "bf16-mixed"
    assert P.choose_precision({"32-true": 100.0, "bf16-mixed": 105.0}) == "bf16-mixed"  # the margin, exactly
    assert P.choose_precision({"32-true": 100.0, "bf16-mixed": 104.9}) == "32-true"  # within noise: float32
    assert P.choose_precision({"32-true": 168.7, "bf16-mixed": 147.9}) == "32-true"  # the Xeon, 0.88x
    assert P.choose_precision({"32-true": 100.0, "bf16-mixed": 101.0}, margin=1.0) == "bf16-mixed"
    assert P.choose_precision({"32-true": 100.0}) == "32-true"


def test_time_candidates_interleaves_and_skips_the_warmup():
    calls, clock = [], iter(range(100))
    times = P.time_candidates(calls.append, ["32-true", "bf16-mixed"], warmup=1, rounds=3,
                              timer=lambda: float(next(clock)))
    assert calls == ["32-true", "bf16-mixed", "bf16-mixed", "32-true"] * 2  # order alternates per round
    assert {k: len(v) for k, v in times.items()} == {"32-true": 3, "bf16-mixed": 3}
    assert all(t == 1.0 for v in times.values() for t in v)


@pytest.mark.parametrize("flags, offered", [(AMX, True), (AVX512_BF16_ONLY, True), (NEITHER, False), (set(), False)])
def test_bf16_is_a_candidate_only_with_native_bf16(monkeypatch, flags, offered):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: set(flags))
    assert P.candidates() == (["32-true", "bf16-mixed"] if offered else ["32-true"])
    with pytest.raises(ValueError, match="16-mixed"):
        P.candidates(["32-true", "16-mixed"])


def fake_cpu(monkeypatch, flags, name="Test CPU", model="143"):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: set(flags))
    monkeypatch.setattr(hardware, "cpu_identity", lambda: {"model_name": name, "family": "6", "model": model,
                                                           "stepping": "8", "flags": sorted(flags)})


class FakeMeasure:
    """Stands in for ``P.measure``: step seconds for a given bf16/fp32 speed ratio; counts its calls."""

    def __init__(self, ratio: float):
        self.ratio, self.calls = ratio, 0

    def __call__(self, module, batch, names, warmup=2, rounds=3, timer=None):
        self.calls += 1
        return {n: [0.1 / (self.ratio if n == "bf16-mixed" else 1.0)] * rounds for n in names}


def patch_measurement(monkeypatch, ratio: float) -> FakeMeasure:
    fake = FakeMeasure(ratio)
    monkeypatch.setattr(P, "measure", fake)
    monkeypatch.setattr(P, "one_train_batch", lambda dm: {"sample_id": ["x"] * 32})
    return fake


# (CPU flags, bf16/fp32 step ratio measured there, expected choice): Sapphire Rapids with AMX (~2x, docs),
# AMD Zen 4 with AVX512-BF16 (1.47x, docs), the Xeon with AVX512-BF16 only (0.88x), no bf16 at all.
@pytest.mark.parametrize("flags, ratio, expected", [(AMX, 2.0, "bf16-mixed"), (AVX512_BF16_ONLY, 1.47, "bf16-mixed"),
                                                     (AVX512_BF16_ONLY, 0.88, "32-true"),
                                                     (AVX512_BF16_ONLY, 1.02, "32-true"), (NEITHER, 2.0, "32-true")])
def test_decide_never_picks_a_precision_slower_than_float32(monkeypatch, tmp_path, flags, ratio, expected):
    fake_cpu(monkeypatch, flags)
    fake = patch_measurement(monkeypatch, ratio)
    verdict = P.decide(None, None, {"model": {"crop": {"size": 64}}, "batch_size": 32}, cache_dir=tmp_path)
    assert verdict["precision"] == expected
    if "avx512_bf16" in flags:
        assert fake.calls == 1 and verdict["source"] == "measured"
        assert verdict["ratio_vs_fp32"]["bf16-mixed"] == pytest.approx(ratio)
        assert verdict["img_per_s"]["32-true"] == pytest.approx(320.0) and verdict["batch_size"] == 32
    else:  # emulated bfloat16 is not even timed
        assert fake.calls == 0 and "not measured" in verdict["source"] and not (tmp_path / "precision").exists()
    assert "trainer=fast: " in P.describe(verdict) and expected in P.describe(verdict)


def test_verdict_is_cached_per_cpu_and_model_config(monkeypatch, tmp_path):
    fake_cpu(monkeypatch, AVX512_BF16_ONLY, name="CPU A")
    fake = patch_measurement(monkeypatch, 1.5)
    config = {"model": {"crop": {"size": 64}, "channels_last": True}, "batch_size": 32}
    first = P.decide(None, None, config, cache_dir=tmp_path)
    files = list((tmp_path / "precision").glob("*.json"))
    assert len(files) == 1 and first["cache_file"] == str(files[0])
    stored = json.loads(files[0].read_text())
    assert stored["precision"] == "bf16-mixed" and stored["cpu"]["model_name"] == "CPU A"
    assert stored["threads"] == torch.get_num_threads() and stored["torch"] == torch.__version__

    again = P.decide(None, None, config, cache_dir=tmp_path)
    assert fake.calls == 1 and again["source"] == "cached" and again["precision"] == "bf16-mixed"
    assert again["ratio_vs_fp32"] == first["ratio_vs_fp32"]
    assert "cached" in P.describe(again)

    fake.ratio = 0.9  # another model config, another batch size, another CPU, or remeasure: timed again
    assert P.decide(None, None, config | {"model": {"crop": {"size": 96}}}, cache_dir=tmp_path)["precision"] == "32-true"
    assert P.decide(None, None, config | {"batch_size": 64}, cache_dir=tmp_path)["source"] == "measured"
    fake_cpu(monkeypatch, AVX512_BF16_ONLY, name="CPU B")
    assert P.decide(None, None, config, cache_dir=tmp_path)["precision"] == "32-true"
    fake_cpu(monkeypatch, AVX512_BF16_ONLY, name="CPU A")
    assert P.decide(None, None, config, cache_dir=tmp_path)["source"] == "cached"
    assert P.decide(None, None, config, cache_dir=tmp_path, remeasure=True)["precision"] == "32-true"
    assert fake.calls == 5 and len(list((tmp_path / "precision").glob("*.json"))) == 4
    assert P.decide(None, None, config, cache_dir=None)["source"] == "measured"  # no cache: always timed
    files[0].write_text("{not json")  # a damaged cache file is measured again, never trusted
    assert P.decide(None, None, config, cache_dir=tmp_path)["source"] == "measured"


def test_disagreeing_rounds_are_timed_again_then_float32_uncached(monkeypatch, tmp_path):
    # load hits the second round's float32 step: its ratio is off, the median of the paired ratios is not
    times = {"32-true": [0.10, 0.40, 0.10], "bf16-mixed": [0.11, 0.11, 0.11]}
    assert P.round_ratios(times)["bf16-mixed"] == pytest.approx([0.909, 3.636, 0.909], abs=1e-3)
    summary = P.summarise(times, batch_size=32)
    assert summary["precision"] == "32-true" and summary["ratio_vs_fp32"]["bf16-mixed"] == pytest.approx(0.909, abs=1e-3)
    assert not summary["rounds_agree"] and not P.agreed(times)
    assert P.agreed({"32-true": [0.1, 0.2], "bf16-mixed": [0.05, 0.1]})

    fake_cpu(monkeypatch, AVX512_BF16_ONLY)
    monkeypatch.setattr(P, "one_train_batch", lambda dm: {"sample_id": ["x"] * 32})
    calls, second = [], {}

    def flaky(module, batch, names, warmup=2, rounds=3, timer=None):
        calls.append((warmup, rounds))
        return times if len(calls) % 2 else second

    monkeypatch.setattr(P, "measure", flaky)
    # the second try agrees: its verdict stands (bf16 1.5x) and is cached; the first try is kept for the record
    second.update({"32-true": [0.15] * 3, "bf16-mixed": [0.10] * 3})
    verdict = P.decide(None, None, {"batch_size": 32}, cache_dir=tmp_path)
    assert calls == [(2, 3), (0, 3)] and verdict["tries"] == 2 and verdict["rounds_agree"]
    assert verdict["precision"] == "bf16-mixed" and verdict["ratio_vs_fp32"]["bf16-mixed"] == pytest.approx(1.5)
    assert verdict["discarded_round_ratios"]["bf16-mixed"][1] == pytest.approx(3.636, abs=1e-3)
    assert len(list(tmp_path.glob("precision/*.json"))) == 1 and "timed twice" in P.describe(verdict)
    # both tries disagree: float32 although the median says bf16, and nothing cached
    second.clear()
    second.update({"32-true": [0.30, 0.10, 0.30], "bf16-mixed": [0.10, 0.11, 0.10]})
    verdict = P.decide(None, None, {"batch_size": 64}, cache_dir=tmp_path)
    assert verdict["ratio_vs_fp32"]["bf16-mixed"] == pytest.approx(3.0) and not verdict["rounds_agree"]
    assert verdict["precision"] == "32-true" and "cache_file" not in verdict
    assert len(list(tmp_path.glob("precision/*.json"))) == 1
    assert "disagreeing again: float32, not cached" in P.describe(verdict)


def test_verdict_timed_beside_other_processes_is_used_not_cached(monkeypatch, tmp_path, idle_machine):
    fake_cpu(monkeypatch, AVX512_BF16_ONLY)
    patch_measurement(monkeypatch, 1.5)
    idle_machine.update(elsewhere=0.49, own_utilisation=0.51, contended=True)
    verdict = P.decide(None, None, {"batch_size": 32}, cache_dir=tmp_path)
    assert verdict["precision"] == "bf16-mixed" and verdict["cpu_load"]["contended"]
    assert "cache_file" not in verdict and not list(tmp_path.glob("precision/*.json"))
    assert "other processes busy (49% of the CPUs): not cached" in P.describe(verdict)


def test_cpu_contention_reads_the_kernels_counters():
    import sys

    with REAL_CPU_CONTENTION() as load:
        sum(i * i for i in range(2_000_000))  # ~0.1 s of this process's CPU time
    assert 0 < load["own_utilisation"] <= 1.5 and isinstance(load["contended"], bool)
    if sys.platform.startswith("linux"):
        busy, total, own = P._cpu_ticks()
        assert 0 < own <= busy <= total and 0.0 <= load["elsewhere"] <= 1.0


def test_config_key_ignores_what_does_not_change_step_speed():
    from omegaconf import OmegaConf
    cfg = OmegaConf.create({"model": {"crop": {"size": 64}, "optimizer": {"lr": 1e-3}, "total_samples": 10},
                            "loss": {"w": 1}, "augment": None, "data": {"batch_size": 32}})
    key = P.config_key(cfg)
    assert key == {"model": {"crop": {"size": 64}}, "loss": {"w": 1}, "augment": None, "batch_size": 32}
    cfg.model.optimizer.lr = 3e-3
    assert P.config_key(cfg) == key


def test_measure_leaves_module_and_random_state_alone():
    """Real timing of a tiny module in both precisions (bf16 autocast runs on any CPU, emulated if need be):
    weights, BatchNorm statistics, the mean-pose sums, gradients and the random generators are as before."""
    from tests.test_baseline import toy_batch
    from tests.test_speed_switches import _module

    module = _module()
    batch = toy_batch(B=2, size=64)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    rng = torch.random.get_rng_state()
    times = P.measure(module, batch, ["32-true", "bf16-mixed"], warmup=0, rounds=1)
    assert {k: len(v) for k, v in times.items()} == {"32-true": 1, "bf16-mixed": 1}
    assert all(t > 0 for v in times.values() for t in v)
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any("running_mean" in k for k in before) and any(k.startswith("mean_") for k in before)
    assert all(p.grad is None for p in module.parameters()) and module.training
    assert torch.equal(torch.random.get_rng_state(), rng)


def test_fast_resolves_to_measure_on_a_cpu():
    from hpe_bench.export import compose_config
    assert hardware.fast_precision("cpu") == hardware.MEASURE
    cfg = compose_config(["trainer=fast", "trainer.accelerator=cpu"])
    assert cfg.trainer.precision == "measure" and cfg.precision_probe.margin == P.MARGIN
    assert compose_config(["trainer=fast", "trainer.precision=bf16-mixed"]).trainer.precision == "bf16-mixed"


def settle(monkeypatch, tmp_path, overrides=(), info=None, ratio=0.88):
    from hpe_bench.export import compose_config
    fake_cpu(monkeypatch, AVX512_BF16_ONLY)
    fake = patch_measurement(monkeypatch, ratio)
    cfg = compose_config(["trainer=fast", "trainer.accelerator=cpu", f"paths.cache_dir={tmp_path}", *overrides])
    info = info if info is not None else {"config": {"trainer": {"precision": "measure"}}}
    changed = P.settle_precision(cfg, None, None, info)
    return changed, cfg, info, fake


def test_settle_precision_sets_the_config_and_run_info(monkeypatch, tmp_path, caplog):
    with caplog.at_level("INFO", logger="hpe_bench.precision"):
        changed, cfg, info, fake = settle(monkeypatch, tmp_path)
    assert changed and fake.calls == 1
    assert cfg.trainer.precision == "32-true" and info["config"]["trainer"]["precision"] == "32-true"
    assert info["precision_choice"]["ratio_vs_fp32"]["bf16-mixed"] == pytest.approx(0.88)
    assert "trainer=fast: bf16-mixed 0.88x float32" in caplog.text and "-> 32-true" in caplog.text
    _, cfg, info, fake = settle(monkeypatch, tmp_path, ratio=1.5)  # the cached verdict, not the new timing
    assert fake.calls == 0 and cfg.trainer.precision == "32-true" and info["precision_choice"]["source"] == "cached"
    _, cfg, info, _ = settle(monkeypatch, tmp_path, ["precision_probe.remeasure=true"], ratio=1.5)
    assert cfg.trainer.precision == "bf16-mixed" and info["config"]["trainer"]["precision"] == "bf16-mixed"


def test_settle_precision_without_measuring(monkeypatch, tmp_path):
    changed, cfg, info, _ = settle(monkeypatch, tmp_path, ["trainer.precision=32-true"])
    assert not changed and "precision_choice" not in info
    resumed = {"config": {"trainer": {"precision": "bf16-mixed"}}, "resumes": [{}]}
    for overrides, info, expected in [(["trainer.devices=2"], None, "32-true"),
                                      (["train=false"], None, "32-true"), ([], resumed, "bf16-mixed")]:
        changed, cfg, info, fake = settle(monkeypatch, tmp_path, overrides, info, ratio=1.5)
        assert changed and fake.calls == 0 and cfg.trainer.precision == expected, overrides
        assert info["precision_choice"]["precision"] == expected
        assert info["config"]["trainer"]["precision"] == expected


@pytest.mark.slow
def test_fast_run_logs_and_records_its_choice(tmp_path):
    """``trainer=fast debug=default`` end to end, twice with one cache: the choice is logged with its ratio, is
    the precision of run_info.json's config and of the logged hyperparameters; the second run reuses it."""
    from tests.test_run_e2e import run_cli

    procs = [run_cli(tmp_path, "trainer=fast", "test=false", f"hydra.run.dir={tmp_path / f'run{i}'}") for i in range(2)]
    native = hardware.cpu_has_native_bf16()
    for i, proc in enumerate(procs):
        out = proc.stdout + proc.stderr
        assert "trainer=fast: " in out
        info = json.loads((tmp_path / f"run{i}" / "run_info.json").read_text())
        choice = info["precision_choice"]
        assert choice["precision"] in ("32-true", "bf16-mixed")
        assert info["config"]["trainer"]["precision"] == choice["precision"]
        hparams = (tmp_path / f"run{i}" / "csv" / "hparams.yaml").read_text()
        assert f"precision: {choice['precision']}" in hparams and "precision: measure" not in hparams
        if native:  # cached unless the first run's rounds disagreed or other processes took its cores
            cached = i == 1 and "cache_file" in json.loads((tmp_path / "run0" / "run_info.json").read_text())[
                "precision_choice"]
            assert choice["source"] == ("cached" if cached else "measured")
            assert f"x float32 (" in out and f"-> {choice['precision']}" in out
            assert choice["ratio_vs_fp32"]["bf16-mixed"] > 0 and choice["batch_size"] == 8
        else:
            assert "not measured" in choice["source"]
    if native:
        assert len(list((tmp_path / "cache" / "precision").glob("*.json"))) <= 1
