"""The GPU benchmark's bounds against numbers worked out by hand, its spec table, T4 emulation
with a faked CUDA, and one run of `benchmarks/gpu.py --smoke` on the CPU."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlhf_course import bench
from rlhf_course.bench import Row

ROOT = Path(__file__).resolve().parents[1]

# SmolLM2-135M's shape (the t4 preset's model): 30 layers, width 576, 9 heads of 64, 3 KV heads.
SMOL = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                   num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
SMOL_PARAMS = 134_515_008
"""30 x (4 attention + 3 MLP matrices + 2 norms = 3,540,096) + 49,152 x 576 embedding + 576."""


def _load_gpu_script():
    name = "bench_gpu_script"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "gpu.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # its dataclasses look their module up while being built
        spec.loader.exec_module(module)
    return sys.modules[name]


# --------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, label", [
    ("Tesla T4", "T4"),
    ("NVIDIA L4", "L4"),
    ("NVIDIA A100-SXM4-80GB", "A100 80GB SXM"),
    ("NVIDIA A100 80GB PCIe", "A100 80GB PCIe"),
    ("NVIDIA A100-SXM4-40GB", "A100 40GB"),
    ("NVIDIA A100-PCIE-40GB", "A100 40GB"),
    ("NVIDIA H100 80GB HBM3", "H100 SXM"),
    ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA H200", "H200 SXM"),
])
def test_spec_matches_device_names(name, label):
    assert bench.spec_for(name).label == label


@pytest.mark.parametrize("name", [None, "", "cpu", "NVIDIA GeForce RTX 4090", "NVIDIA L40S",
                                  "NVIDIA GH200 480GB"])
def test_unknown_devices_and_cpu_have_no_spec(name):
    # L40S must not pass for an L4, nor GH200 for an H200: different chips, different bounds.
    assert bench.spec_for(name) is None


def test_emulating_a_t4_gives_the_t4_spec_on_any_device():
    assert bench.spec_for("NVIDIA H100 80GB HBM3", emulate_t4=True) is bench.T4
    assert bench.spec_for(None, emulate_t4=True) is bench.T4
    assert (bench.T4.bandwidth, bench.T4.flops) == (320e9, 65e12)


# --------------------------------------------------------------------------------------------
# Decoding: bytes per step and the bandwidth fraction
# --------------------------------------------------------------------------------------------


def test_smollm2_135m_weighs_270_mb_in_fp16():
    with torch.device("meta"):  # the shapes without the memory
        model = LlamaForCausalLM(SMOL)
    # Tied embeddings: the one matrix is the output layer, read in full every step.
    assert bench.dense_params(model) == SMOL_PARAMS
    assert bench.dense_params(model) * 2 == 269_030_016


def test_untied_input_embedding_is_not_counted():
    cfg = LlamaConfig(vocab_size=100, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                      num_attention_heads=2, tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    total = sum(p.numel() for p in model.parameters())
    assert bench.dense_params(model) == total - 100 * 8


def test_kv_cache_from_a_config():
    # 30 layers x 2 (K and V) x 3 KV heads x 64 x 2 bytes
    assert bench.kv_cache_bytes_per_token(SMOL, 2) == 23_040
    assert bench.mean_context(64, 128) == 128
    assert bench.kv_cache_bytes(SMOL, batch=64, context=128, dtype_bytes=2) == 188_743_680
    # No num_key_value_heads (multi-head attention): every head has its own keys and values.
    mha = SimpleNamespace(num_hidden_layers=2, num_attention_heads=4, hidden_size=64)
    assert bench.kv_cache_bytes_per_token(mha, 4) == 2 * 2 * 4 * 16 * 4


def test_bandwidth_fraction_worked_example():
    per_step = bench.decode_bytes_per_step(269_030_016, 188_743_680)
    assert per_step == 457_773_696
    # 12,000 tok/s at batch 64 = 187.5 steps/s x 457.8 MB = 85.8 GB/s of a T4's 320.
    assert bench.bandwidth_fraction(12_000, 64, per_step, 320e9) == pytest.approx(0.26822, abs=1e-5)
    # The bound itself: 320e9 / 457.8e6 = 699 steps/s, 44,738 tok/s at batch 64.
    assert bench.bandwidth_fraction(44_738, 64, per_step, 320e9) == pytest.approx(1.0, abs=1e-4)
    assert bench.bandwidth_fraction(12_000, 64, per_step, None) is None
    with pytest.raises(ValueError, match="batch=0"):
        bench.bandwidth_fraction(12_000, 0, per_step, 320e9)


# --------------------------------------------------------------------------------------------
# Training: FLOPs per token and the FLOP/s fraction
# --------------------------------------------------------------------------------------------


def test_train_flops_per_token_palm_accounting():
    # 6 x 134,515,008 + 12 x 30 layers x 576 x 1024 tokens
    assert bench.train_flops_per_token(SMOL_PARAMS, 30, 576, 1024) == 807_090_048 + 212_336_640


def test_flops_fraction_worked_example():
    per_token = bench.train_flops_per_token(SMOL_PARAMS, 30, 576, 1024)
    # 12,750 tok/s x 1.0194 GFLOP = 13.0 TFLOP/s of a T4's 65.
    assert bench.flops_fraction(12_750, per_token, 65e12) == pytest.approx(0.19996, abs=1e-5)
    assert bench.flops_fraction(12_750, per_token, None) is None


# --------------------------------------------------------------------------------------------
# T4 emulation with a faked CUDA
# --------------------------------------------------------------------------------------------


def test_emulate_t4_without_cuda_says_so(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        bench.emulate_t4()


def test_emulate_t4_caps_a_big_gpu_to_15_gib(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: SimpleNamespace(total_memory=80 * 2**30))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda fraction, device: calls.append((fraction, device)))
    assert bench.emulate_t4(0) == pytest.approx(15 / 80)
    assert calls == [(pytest.approx(0.1875), 0)]


def test_emulate_t4_refuses_a_gpu_under_15_gib(monkeypatch):
    # A real T4 reports about 14.7 GiB: there is nothing to emulate.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: SimpleNamespace(total_memory=int(14.7 * 2**30)))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda *a: pytest.fail("must not cap a GPU smaller than the cap"))
    with pytest.raises(RuntimeError, match="less than"):
        bench.emulate_t4(0)


# --------------------------------------------------------------------------------------------
# Formatting and arguments
# --------------------------------------------------------------------------------------------


def test_formatting_helpers():
    assert bench.format_rate(12_345.6, "tok/s") == "12,346 tok/s"
    assert bench.format_rate(3.4219, "samples/s") == "3.42 samples/s"
    assert bench.format_fraction(0.26822, "320 GB/s (T4)") == "26.8% of 320 GB/s (T4)"
    assert bench.format_fraction(None, "320 GB/s (T4)") == "n/a"
    assert bench.format_memory(3 * 2**30, 15 * 2**30) == "3.00 GiB (20% of 15 GiB)"
    assert bench.format_memory(1.5 * 2**30) == "1.50 GiB"
    assert bench.format_memory(None) == "n/a"


def test_markdown_table():
    table = bench.markdown_table([Row("sft", "a | b", "1 tok/s", "n/a", "n/a")])
    lines = table.splitlines()
    assert lines[0] == "| stage | setting | throughput | fraction of bound | peak memory |"
    assert lines[1] == "| --- | --- | --- | --- | --- |"
    assert lines[2] == "| sft | a \\| b | 1 tok/s | n/a | n/a |"  # a "|" in a cell is escaped
    assert table.endswith("\n")


def test_parse_batches():
    assert bench.parse_batches("16,64") == [16, 64]
    assert bench.parse_batches(" 8 , ") == [8]
    for bad in ("", "0", "a,64"):
        with pytest.raises(ValueError, match="--batch"):
            bench.parse_batches(bad)


@pytest.mark.parametrize("profile, precision, seq, new_tokens, chunk", [
    ("t4", "fp16", 1024, 128, 32),
    ("a100", "bf16", 2048, 256, 64),
])
def test_sizes_come_from_the_presets(profile, precision, seq, new_tokens, chunk):
    gpu = _load_gpu_script()
    plan = gpu.make_plan(gpu.parse_args([]), profile)
    assert (plan.precision, plan.sft_len, plan.rm_len, plan.new_tokens, plan.chunk) == (
        precision, seq, seq, new_tokens, chunk)
    assert plan.batches == (16, 64)
    assert plan.training == f"fp32 weights + {precision} autocast"


def test_emulate_t4_flag_caps_memory_and_picks_the_t4_profile(monkeypatch):
    gpu = _load_gpu_script()
    calls = []
    # setenv (not delenv) so that teardown removes the "1" that choose() writes
    monkeypatch.setenv("RLHF_COURSE_EMULATE_T4", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: SimpleNamespace(total_memory=80 * 2**30))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda fraction, device: calls.append(fraction))
    device, profile, emulating = gpu.choose(gpu.parse_args(["--emulate-t4"]))
    assert (device.type, profile, emulating) == ("cuda", "t4", True)
    assert calls == [pytest.approx(0.1875)]
    assert os.environ["RLHF_COURSE_EMULATE_T4"] == "1"
    with pytest.raises(SystemExit, match="drop --profile a100"):
        gpu.choose(gpu.parse_args(["--emulate-t4", "--profile", "a100"]))


def test_out_of_memory_becomes_a_row_and_the_run_goes_on():
    gpu = _load_gpu_script()

    def too_big():
        raise torch.OutOfMemoryError("CUDA out of memory")

    rows = gpu.guarded(SimpleNamespace(capacity=15 * 2**30), "sft", "batch 16", too_big)
    assert [(r.stage, r.throughput, r.bound) for r in rows] == [("sft", "out of memory", "n/a")]
    assert "over 15.00 GiB" in rows[0].memory and "--seq-len" in rows[0].memory


# --------------------------------------------------------------------------------------------
# The script itself, on the CPU
# --------------------------------------------------------------------------------------------


def test_gpu_script_smoke_prints_a_row_per_stage(tmp_path):
    out = tmp_path / "RESULTS.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--smoke", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cells = [[c.strip() for c in line.strip("|").split(" | ")]
             for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    header, rows = cells[0], cells[1:]
    assert header == list(bench.COLUMNS)
    stages = [r[0] for r in rows]
    assert set(stages) == {"rollout", "sft", "rm", "logprobs", "ppo"}
    assert stages.count("rollout") == 2 and stages.count("logprobs") == 2  # two batches, two chunks
    for stage, _, throughput, bound, memory in rows:
        assert re.fullmatch(r"[\d,.]+ (tok/s|samples/s)", throughput), (stage, throughput)
        assert float(throughput.split()[0].replace(",", "")) > 0
        assert bound == "n/a", (stage, bound)  # no bound on a CPU
        assert memory.startswith("n/a (CPU"), (stage, memory)
    # --out appends the same table to the results file
    assert bench.markdown_table([Row(*r) for r in rows]) in out.read_text(encoding="utf-8")


def test_seeds_benchmark_table_reads_each_seeds_report():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "seeds", Path(__file__).resolve().parent.parent / "benchmarks" / "seeds.py")
    seeds = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seeds)
    text = seeds.table({1: {"base": {"gold": 0.3}, "sft": {"gold": 0.65, "gold_ood": 0.4},
                            "ppo": {"gold": 0.72, "oracle_gold": 0.8}},
                        0: {"sft": {"gold": 0.6}}})
    lines = text.splitlines()
    assert lines[0].startswith("| seed | base | SFT | RM acc |") and len(lines) == 4
    assert lines[2].startswith("| 0 | - | 0.600 |") and lines[2].endswith("| - |")
    assert "| 1 | 0.300 | 0.650 | - | 0.720 | 0.800 |" in lines[3] and lines[3].endswith("| +0.070 |")
