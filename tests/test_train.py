"""Training on the tiny model, on CPU: LoRA and QLoRA runs whose loss falls, LLaVA's output layout in every
checkpoint, reload and generation, merge, and resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from finecaption_plugin.masks import encode_compositioncap, encode_rle
from finecaption_plugin.train import parse_args, train

CAPTIONS = ("The red car is parked beside a tall green tree.", "A small dog sits on the grass.")


def write_dataset(root: Path, count: int = 4) -> Path:
    """``count`` LLaVA records with masks in four formats (CompositionCap, RLE, polygon, PNG) -> train.json."""
    rng = np.random.default_rng(0)
    records = []
    for index in range(count):
        height, width = 96, 128
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(
            root / f"img{index}.png"
        )
        mask = np.zeros((height, width), bool)
        mask[10 + index : 60, 20 : 80 + index] = True
        kind = index % 4
        if kind == 0:
            value = encode_compositioncap(mask)
        elif kind == 1:
            value = encode_rle(mask)
            value["counts"] = (
                value["counts"].decode() if isinstance(value["counts"], bytes) else value["counts"]
            )
        elif kind == 2:
            value = [[20, 10 + index, 80 + index, 10 + index, 80 + index, 60, 20, 60]]
        else:
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / f"mask{index}.png")
            value = f"mask{index}.png"
        records.append(
            {
                "id": f"sample-{index}",
                "image": f"img{index}.png",
                "height": height,
                "width": width,
                "mask": value,
                "conversations": [
                    {"from": "human", "value": "<image>\nDescribe the masked region."},
                    {"from": "gpt", "value": CAPTIONS[index % 2]},
                ],
            }
        )
    path = root / "train.json"
    path.write_text(json.dumps(records))
    return path


def run_args(checkpoint: Path, data: Path, output_dir: Path, *extra: str) -> list[str]:
    """Flags of a short LLaVA-style LoRA run on the tiny model, CPU, float32."""
    return [
        "--model_name_or_path", str(checkpoint),
        "--version", "llama3",
        "--data_path", str(data),
        "--image_folder", str(data.parent),
        "--output_dir", str(output_dir),
        "--lora_enable", "True",
        "--lora_r", "8",
        "--lora_alpha", "16",
        "--lora_dropout", "0",
        "--per_device_train_batch_size", "4",
        "--learning_rate", "1e-2",
        "--mm_projector_lr", "2e-3",
        "--logging_steps", "1",
        "--report_to", "none",
        "--use_cpu", "True",
        "--dataloader_pin_memory", "False",
        "--seed", "0",
        *extra,
    ]  # fmt: skip


def _losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def lora_run(tiny_checkpoint, dataset, tmp_path_factory):
    output = tmp_path_factory.mktemp("lora-run")
    argv = run_args(tiny_checkpoint, dataset, output, "--max_steps", "12", "--save_steps", "6", "--bf16", "True")
    return train(*parse_args(argv))


@pytest.fixture(scope="module")
def qlora_run(tiny_checkpoint, dataset, tmp_path_factory):
    output = tmp_path_factory.mktemp("qlora-run")
    argv = run_args(
        tiny_checkpoint, dataset, output, "--bits", "4", "--max_steps", "12", "--save_steps", "12"
    )
    return train(*parse_args(argv))


def _assert_loss_falls(trainer) -> None:
    losses = _losses(trainer)
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5, losses


def test_lora_loss_falls(lora_run):
    assert lora_run.args.bf16
    frozen = dict(lora_run.model.named_parameters())
    # bf16 LoRA: the frozen model in bf16, the trained parts (LoRA, mask branch) kept in fp32 for the optimizer.
    assert frozen["base_model.model.model.language_model.layers.0.self_attn.q_proj.base_layer.weight"].dtype == (
        torch.bfloat16
    )
    # (the mask branch trains as peft's modules_to_save: a trained copy beside the frozen original)
    assert frozen["base_model.model.model.vision_tower.fast_mask_embed.modules_to_save.default.weight"].dtype == (
        torch.float32
    )
    _assert_loss_falls(lora_run)


def test_lora_targets_only_the_language_model(lora_run):
    lora_modules = {
        name.split(".lora_")[0] for name, _ in lora_run.model.named_parameters() if ".lora_" in name
    }
    assert lora_modules, "no LoRA module"
    assert all(".language_model.layers." in name for name in lora_modules)
    # 2 layers x (q, k, v, o, gate, up, down)
    assert len(lora_modules) == 14
    trainable = {name for name, param in lora_run.model.named_parameters() if param.requires_grad}
    assert any("fast_mask_embed" in name for name in trainable)
    assert any(".adapters.0." in name for name in trainable)
    assert any("multi_modal_projector" in name for name in trainable)
    assert not any(".fast_tower." in name or ".slow_tower." in name for name in trainable)
    assert not any(name.endswith("embed_tokens.weight") or "lm_head" in name for name in trainable)


def test_projector_learns_at_mm_projector_lr(lora_run):
    projector = {  # peft's trained copy of the projector (its frozen original is in no param group)
        id(param)
        for name, param in lora_run.model.named_parameters()
        if "multi_modal_projector" in name and param.requires_grad
    }
    rates = {}
    for group in lora_run.optimizer.param_groups:
        for param in group["params"]:
            rates[id(param)] = group["initial_lr"]  # before the scheduler's decay
    assert projector and all(rates[key] == 2e-3 for key in projector)
    others = {rate for key, rate in rates.items() if key not in projector}
    assert others == {1e-2}


def test_group_by_modality_length_reaches_the_trainer(lora_run, monkeypatch):
    from finecaption_plugin.data import ModalityLengthGroupedSampler

    assert not isinstance(lora_run._get_train_sampler(), ModalityLengthGroupedSampler)
    monkeypatch.setattr(lora_run.args, "group_by_modality_length", True)
    sampler = lora_run._get_train_sampler()
    assert isinstance(sampler, ModalityLengthGroupedSampler)
    assert sorted(sampler) == list(range(len(lora_run.train_dataset)))


def test_pretrained_projector_is_loaded_from_llava_names(tiny_checkpoint, tmp_path):
    from finecaption_plugin import FineCaptionForConditionalGeneration
    from finecaption_plugin.train import load_projector

    model = FineCaptionForConditionalGeneration.from_pretrained(tiny_checkpoint)
    projector = model.model.multi_modal_projector
    stage1 = {  # a LLaVA stage-1 mm_projector.bin
        "model.mm_projector.0.weight": torch.randn_like(projector.linear_1.weight),
        "model.mm_projector.0.bias": torch.randn_like(projector.linear_1.bias),
        "model.mm_projector.2.weight": torch.randn_like(projector.linear_2.weight),
        "model.mm_projector.2.bias": torch.randn_like(projector.linear_2.bias),
    }
    torch.save(stage1, tmp_path / "mm_projector.bin")
    load_projector(model, str(tmp_path / "mm_projector.bin"))
    assert torch.equal(projector.linear_1.weight, stage1["model.mm_projector.0.weight"])
    assert torch.equal(projector.linear_2.bias, stage1["model.mm_projector.2.bias"])
    del stage1["model.mm_projector.2.bias"]
    torch.save(stage1, tmp_path / "partial.bin")
    with pytest.raises(ValueError, match=r"missing \['linear_2.bias'\]"):
        load_projector(model, str(tmp_path / "partial.bin"))


def test_every_checkpoint_has_llava_layout(lora_run):
    output = Path(lora_run.args.output_dir)
    for folder in (output / "checkpoint-6", output / "checkpoint-12", output):
        for name in (
            "adapter_model.safetensors",
            "adapter_config.json",
            "config.json",
            "non_lora_trainables.bin",
        ):
            assert (folder / name).is_file(), folder / name
    saved = torch.load(output / "non_lora_trainables.bin", weights_only=True)
    assert "base_model.model.model.vision_tower.fast_mask_embed.weight" in saved
    assert not any("lora_" in key for key in saved)
    # The mask branch starts at zero and has been trained.
    assert saved["base_model.model.model.vision_tower.fast_mask_embed.weight"].abs().sum() > 0
    early = torch.load(output / "checkpoint-6" / "non_lora_trainables.bin", weights_only=True)
    key = "base_model.model.model.multi_modal_projector.linear_1.weight"
    assert not torch.equal(early[key], saved[key])


def test_qlora_loss_falls_on_4bit_language_model(qlora_run):
    import bitsandbytes as bnb

    modules = dict(qlora_run.model.named_modules())
    q_proj = modules["base_model.model.model.language_model.layers.0.self_attn.q_proj"]
    assert isinstance(q_proj.base_layer, bnb.nn.Linear4bit)
    assert q_proj.base_layer.weight.quant_type == "nf4"
    for name in (
        "model.vision_tower.fast_tower.encoder.layers.0.self_attn.q_proj",
        # the projector trains as peft's modules_to_save: its trained copy and frozen original
        "model.multi_modal_projector.modules_to_save.default.linear_1",
        "model.multi_modal_projector.original_module.linear_1",
        "lm_head",
    ):
        assert type(modules["base_model.model." + name]) is torch.nn.Linear, name
    _assert_loss_falls(qlora_run)


def _batch(processor, image_size: int = 96):
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (image_size, 128, 3), dtype=np.uint8))
    mask = np.zeros((image_size, 128), bool)
    mask[10:60, 20:80] = True
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "Describe the masked region."}],
        }
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor(text=[prompt], images=[image], masks=[mask], return_tensors="pt", padding=True)


def test_saved_run_reloads_and_generates(lora_run):
    from finecaption_plugin.merge import load_pretrained

    output = Path(lora_run.args.output_dir)
    model, processor = load_pretrained(output)
    trained = dict(lora_run.model.named_parameters())
    for name, param in model.named_parameters():
        if "fast_mask_embed" in name or ("lora_A" in name and "layers.0.self_attn.q_proj" in name):
            torch.testing.assert_close(param, trained[name].to(param.dtype))
    model.eval()
    batch = _batch(processor)
    with torch.no_grad():
        generated = model.generate(**batch, max_new_tokens=6, do_sample=False)
        reference = lora_run.model.eval()(**batch).logits[:, -1]
        logits = model(**batch).logits[:, -1]
    # The run held its frozen weights in bf16; the reload takes the base's fp32 ones: bf16 rounding apart.
    torch.testing.assert_close(logits, reference, atol=2e-2, rtol=2e-2)
    assert generated.shape[1] > batch["input_ids"].shape[1]


def test_merge_matches_adapter_plus_base(lora_run, tmp_path):
    from finecaption_plugin import FineCaptionForConditionalGeneration
    from finecaption_plugin.cli import main as cli_main
    from finecaption_plugin.merge import load_pretrained

    output = Path(lora_run.args.output_dir)
    base = json.loads((output / "adapter_config.json").read_text())["base_model_name_or_path"]
    merged_dir = tmp_path / "merged"
    assert (
        cli_main(
            ["merge", "--model-path", str(output), "--model-base", base, "--save-model-path", str(merged_dir)]
        )
        == 0
    )
    assert not (merged_dir / "adapter_config.json").exists()
    merged = FineCaptionForConditionalGeneration.from_pretrained(merged_dir).eval()
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    adapter, processor = load_pretrained(output, base)
    batch = _batch(processor)
    with torch.no_grad():
        torch.testing.assert_close(
            merged(**batch).logits, adapter.eval()(**batch).logits, atol=1e-5, rtol=1e-5
        )


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert process.poll() is None, f"training exited with {process.returncode} before writing {path}"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.02)


@pytest.mark.e2e
def test_killed_run_resumes_to_the_same_result(tiny_checkpoint, dataset, tmp_path, monkeypatch):
    from transformers import Trainer

    from finecaption_plugin.train import last_complete_checkpoint

    steps = ["--max_steps", "8", "--save_steps", "2"]
    killed = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "finecaption_plugin.train",
        *run_args(tiny_checkpoint, dataset, killed, *steps),
    ]
    with open(tmp_path / "stderr.log", "wb") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        try:
            _wait_for(killed / "checkpoint-2" / "trainer_state.json", process)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert not (killed / "trainer_state.json").exists(), "the run finished before it was killed"
    done = int(last_complete_checkpoint(killed).name.removeprefix("checkpoint-"))

    executed = []  # the optimizer steps this process runs: only those after the checkpoint
    training_step = Trainer.training_step

    def counted(self, *args, **kwargs):
        executed.append(self.state.global_step)
        return training_step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", counted)
    resumed = train(*parse_args(run_args(tiny_checkpoint, dataset, killed, *steps)))
    monkeypatch.undo()
    assert resumed.state.global_step == 8
    assert executed == list(range(done, 8))
    first_logged = min(entry["step"] for entry in resumed.state.log_history if "loss" in entry)
    assert first_logged == 1  # the log goes on from the killed run's checkpoint

    straight = train(*parse_args(run_args(tiny_checkpoint, dataset, tmp_path / "straight", *steps)))
    assert straight.state.global_step == 8
    resumed_state = torch.load(killed / "non_lora_trainables.bin", weights_only=True)
    straight_state = torch.load(tmp_path / "straight" / "non_lora_trainables.bin", weights_only=True)
    for key, value in straight_state.items():
        torch.testing.assert_close(resumed_state[key], value, atol=1e-5, rtol=1e-4)
    adapters = [dict(run.model.named_parameters()) for run in (resumed, straight)]
    for name, value in adapters[1].items():
        if "lora_" in name:
            torch.testing.assert_close(adapters[0][name], value, atol=1e-5, rtol=1e-4)


def test_resume_from_a_checkpoint_saved_before_modules_to_save(tiny_checkpoint, dataset, tmp_path):
    """A checkpoint whose adapter holds the LoRA layers only (the layout before modules_to_save) resumes with its
    fully trained parts taken from non_lora_trainables.bin."""
    from safetensors.torch import load_file, save_file

    output = tmp_path / "run"
    flags = run_args(tiny_checkpoint, dataset, output, "--max_steps", "1", "--save_steps", "1")
    train(*parse_args(flags))
    checkpoint = output / "checkpoint-1"
    config = json.loads((checkpoint / "adapter_config.json").read_text())
    assert config["modules_to_save"]
    config["modules_to_save"] = None
    (checkpoint / "adapter_config.json").write_text(json.dumps(config))
    adapter = load_file(checkpoint / "adapter_model.safetensors")
    lora_only = {key: value for key, value in adapter.items() if "lora_" in key}
    assert len(lora_only) < len(adapter)
    save_file(lora_only, checkpoint / "adapter_model.safetensors", metadata={"format": "pt"})
    trained = torch.load(checkpoint / "non_lora_trainables.bin", weights_only=True)
    assert trained["base_model.model.model.vision_tower.fast_mask_embed.weight"].abs().sum() > 0

    resumed = train(*parse_args(flags))  # nothing left to train: the model is the checkpoint's
    assert resumed.state.global_step == 1
    assert not resumed.model.peft_config["default"].modules_to_save  # the run goes on in its own layout
    exported = torch.load(output / "non_lora_trainables.bin", weights_only=True)
    assert set(exported) == set(trained)
    for key, value in trained.items():
        torch.testing.assert_close(exported[key], value, rtol=0, atol=0, msg=key)
    weights = dict(resumed.model.named_parameters())
    for key, value in lora_only.items():
        torch.testing.assert_close(weights[key.replace(".weight", ".default.weight")], value, rtol=0, atol=0)


@pytest.mark.e2e
@pytest.mark.parametrize("script", ["finetune_qlora.sh", "finetune_lora.sh", "finetune_stages.sh"])
def test_shipped_scripts_parse(script, tmp_path):
    """The example scripts, run with stand-in launchers, pass flags that `finecaption train` accepts."""
    scripts = Path(__file__).resolve().parents[1] / "scripts"
    for launcher in ("deepspeed", "torchrun"):
        fake = tmp_path / launcher
        fake.write_text(
            f'#!/usr/bin/env bash\nprintf "%s\\0" "$@" >> {tmp_path}/calls\nprintf "\\n\\0" >> {tmp_path}/calls\n'
        )
        fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "OUT": str(tmp_path / "out")}
    subprocess.run(["bash", str(scripts / script)], check=True, env=env, cwd=scripts.parent)
    calls = [call.split("\0")[:-1] for call in (tmp_path / "calls").read_text().split("\n\0") if call]
    assert calls
    for argv in calls:
        argv = argv[argv.index("finecaption_plugin.train") + 1 :]
        config = json.loads((scripts.parent / argv[argv.index("--deepspeed") + 1]).read_text())
        assert config["zero_optimization"]["stage"] in (2, 3)
        del argv[argv.index("--deepspeed") : argv.index("--deepspeed") + 2]  # DeepSpeed is not installed here
        model_args, data_args, training_args = parse_args([*argv, "--use_cpu", "True"])
        if training_args.bits == 4:
            assert config["zero_optimization"]["stage"] == 2 and training_args.lora_enable
        assert training_args.gradient_checkpointing and data_args.image_aspect_ratio == "pad"


@pytest.mark.e2e
@pytest.mark.multiprocess
@pytest.mark.parametrize(
    "launcher",
    [
        ["torch.distributed.run", "--nproc_per_node", "2"],
        ["accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no"],
    ],  # fmt: skip
    ids=["torchrun", "accelerate"],
)
def test_two_process_launch_trains_data_parallel(tiny_checkpoint, dataset, tmp_path, launcher):
    """`torchrun` / `accelerate launch` of the module on CPU (gloo): two ranks share each step's batches."""
    output = tmp_path / "run"
    flags = run_args(tiny_checkpoint, dataset, output, "--max_steps", "4", "--save_steps", "2")
    flags[flags.index("--per_device_train_batch_size") + 1] = "1"
    command = [sys.executable, "-m", *launcher, "-m", "finecaption_plugin.train", *flags]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads((output / "trainer_state.json").read_text())
    # 4 steps x 1 sample x 2 ranks over 4 samples: 2 epochs (one rank alone would make 1).
    assert state["global_step"] == 4 and state["epoch"] == 2.0
    for folder in (output / "checkpoint-2", output):
        assert (folder / "non_lora_trainables.bin").is_file() and (folder / "adapter_model.safetensors").is_file()


# Faults and friction (issue 12)


def test_a_truncated_trainer_state_falls_back_to_the_previous_checkpoint(lora_run, tiny_checkpoint, dataset, tmp_path,
                                                                          monkeypatch):  # fmt: skip
    import shutil

    from transformers import Trainer

    from finecaption_plugin.train import last_complete_checkpoint

    run = tmp_path / "run"
    shutil.copytree(lora_run.args.output_dir, run)
    for name in ("adapter_model.safetensors", "trainer_state.json"):  # as if killed while saving checkpoint-12
        (run / name).unlink(missing_ok=True)
    state = run / "checkpoint-12" / "trainer_state.json"
    state.write_text(state.read_text()[:100])  # a full disk or a kill cut it
    assert last_complete_checkpoint(run) == run / "checkpoint-6"
    executed = []
    training_step = Trainer.training_step
    monkeypatch.setattr(Trainer, "training_step",
                        lambda self, *a, **k: executed.append(self.state.global_step) or training_step(self, *a, **k))
    argv = run_args(tiny_checkpoint, dataset, run, "--max_steps", "12", "--save_steps", "6", "--bf16", "True")
    resumed = train(*parse_args(argv))  # before: every restart failed on the broken JSON
    assert resumed.state.global_step == 12 and executed == list(range(6, 12))


def test_a_stale_output_dir_of_another_model_is_a_clear_error(lora_run, tiny_checkpoint, dataset, tmp_path, capsys):
    import shutil

    from finecaption_plugin.train import main

    run = tmp_path / "run"
    shutil.copytree(lora_run.args.output_dir, run)
    for config in run.glob("checkpoint-*/config.json"):  # as written by a model whose ConvNeXt reads the mask
        saved = json.loads(config.read_text())
        config.write_text(json.dumps(dict(saved, slow_mask_embedding=True)))
    before = {path: path.read_bytes() for path in (run / "checkpoint-12").iterdir() if path.is_file()}
    argv = run_args(tiny_checkpoint, dataset, run, "--max_steps", "14", "--save_steps", "2")
    assert main(argv) == 2  # before: torch's "loaded state dict contains a parameter group that doesn't match"
    error = capsys.readouterr().err
    assert f"finecaption train: error: {run / 'checkpoint-12'}: this checkpoint" in error
    assert "differs in slow_mask_embedding)" in error and "new --output_dir" in error
    assert "Traceback" not in error
    assert not (run / "checkpoint-14").exists()
    assert all(path.read_bytes() == data for path, data in before.items())


def test_a_full_disk_while_saving_says_no_space_left(tiny_checkpoint, dataset, tmp_path, monkeypatch, capsys):
    from finecaption_plugin.train import main

    def full_disk(*args, **kwargs):  # what torch's serializer says when the disk is full: never the reason
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")  # fmt: skip

    monkeypatch.setattr(torch, "save", full_disk)
    argv = run_args(tiny_checkpoint, dataset, tmp_path / "run", "--max_steps", "1", "--save_steps", "1")
    assert main(argv) == 1
    error = capsys.readouterr().err
    assert f"finecaption train: error: no space left on device while writing to {tmp_path / 'run'} (" in error
    assert "MiB free" in error and "resumes from the last complete checkpoint" in error


@pytest.mark.skipif(torch.cuda.is_available(), reason="what a CPU-only machine does")
def test_bf16_training_on_a_cpu_only_machine_needs_no_use_cpu_nor_warns(tiny_checkpoint, dataset, tmp_path):
    import warnings

    argv = run_args(tiny_checkpoint, dataset, tmp_path / "run", "--max_steps", "1", "--bf16", "True",
                    "--gradient_checkpointing", "True")  # fmt: skip
    argv = _without_flag(argv, "--use_cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = train(*parse_args(argv))  # before: "Your setup doesn't support bf16/gpu. You need to assign use_cpu"
    assert trainer.args.use_cpu and trainer.state.global_step == 1
    assert trainer.args.activation_checkpointing and trainer.args.activation_checkpointing_kwargs == {
        "use_reentrant": False
    }
    deprecated = [str(w.message) for w in caught if "gradient_checkpointing" in str(w.message)]
    assert not deprecated, deprecated


def _without_flag(argv: list[str], flag: str) -> list[str]:
    if flag not in argv:
        return argv
    index = argv.index(flag)
    return argv[:index] + argv[index + 2 :]
