"""finecaption_plugin.merge: LoRA runs load and merge through peft, runs saved before modules_to_save included."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from finecaption_plugin import FineCaptionForConditionalGeneration
from finecaption_plugin.lora import (
    LORA_TARGETS,
    NON_LORA_FILE,
    add_lora,
    save_non_lora_trainables,
    saved_modules,
    set_trainable,
)
from finecaption_plugin.merge import load_pretrained, merge_lora

PEFT_PREFIX = "base_model.model."
OLD_TRAINED = ("mask", "adapters.", "fusion.", "multi_modal_projector")  # the parts the old runs trained fully


def perturb_trained(model, seed: int) -> None:
    """Stand-in for training: every trainable tensor moves (lora_B and the zero-init mask conv included)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)


def write_old_layout_run(base: Path, run: Path) -> dict[str, torch.Tensor]:
    """A LoRA run as finecaption wrote it before modules_to_save -> its non_lora_trainables.bin state.

    As the old ``lora.add_lora`` / ``set_trainable`` / ``non_lora_state_dict`` and ``FineCaptionTrainer.save_model``
    did: a peft adapter of the LoRA layers only (no modules_to_save), the fully trained parts trained in place and
    saved under the PeftModel's parameter names in ``non_lora_trainables.bin``, and the base's ``config.json``.
    """
    model = FineCaptionForConditionalGeneration.from_pretrained(base)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, bias="none", target_modules=LORA_TARGETS,
                        task_type="CAUSAL_LM")  # fmt: skip
    model = get_peft_model(model, config)
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name or any(part in name for part in OLD_TRAINED))
    perturb_trained(model, seed=3)
    model.save_pretrained(run)
    state = {
        name: param.detach().cpu().clone()
        for name, param in model.named_parameters()
        if param.requires_grad and "lora_" not in name
    }
    torch.save(state, run / NON_LORA_FILE)
    model.get_base_model().config.save_pretrained(run)
    return state


def old_load_and_merge(base: Path, run: Path):
    """What ``finecaption merge`` did before modules_to_save: base, then LLaVA's file, then the adapter, merged."""
    model = FineCaptionForConditionalGeneration.from_pretrained(base)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in torch.load(run / NON_LORA_FILE, weights_only=True).items():
            params[key.removeprefix(PEFT_PREFIX)].copy_(value)
    return PeftModel.from_pretrained(model, run).merge_and_unload()


def assert_same_weights(merged_dir: Path, reference) -> None:
    merged = FineCaptionForConditionalGeneration.from_pretrained(merged_dir).state_dict()
    expected = reference.state_dict()
    assert set(merged) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(merged[key], value, rtol=0, atol=0, msg=key)


def test_run_saved_before_modules_to_save_loads_and_merges_as_before(tiny_checkpoint, tmp_path):
    run = tmp_path / "old-run"
    state = write_old_layout_run(tiny_checkpoint, run)
    assert saved_modules(run) == []  # the adapter holds the LoRA layers only

    merged_dir = merge_lora(run, None, tmp_path / "merged")  # the base recorded in the adapter
    reference = old_load_and_merge(tiny_checkpoint, run)
    assert_same_weights(merged_dir, reference)
    # The merge carries both the fully trained parts and the LoRA deltas.
    merged = FineCaptionForConditionalGeneration.from_pretrained(merged_dir)
    base = FineCaptionForConditionalGeneration.from_pretrained(tiny_checkpoint)
    mask_key = PEFT_PREFIX + "model.vision_tower.fast_mask_embed.weight"
    assert state[mask_key].abs().sum() > 0
    torch.testing.assert_close(merged.model.vision_tower.fast_mask_embed.weight, state[mask_key], rtol=0, atol=0)
    q_proj = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[q_proj], base.state_dict()[q_proj])

    loaded, _ = load_pretrained(run, tiny_checkpoint)
    weights = loaded.merge_and_unload().state_dict()
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(weights[key], value, rtol=0, atol=0, msg=key)


def test_new_run_merges_its_modules_to_save_through_peft(tiny_checkpoint, tmp_path):
    run = tmp_path / "run"
    parts = {"mask", "connector", "projector"}
    model = FineCaptionForConditionalGeneration.from_pretrained(tiny_checkpoint)
    args = SimpleNamespace(lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_bias="none")
    model = add_lora(model, args, parts)
    set_trainable(model, parts, upcast=True)
    perturb_trained(model, seed=4)
    model.save_pretrained(run)
    save_non_lora_trainables(model, run)
    # The LLaVA export is not what restores the parts: the adapter is (a zeroed export changes nothing).
    export = torch.load(run / NON_LORA_FILE, weights_only=True)
    torch.save({key: torch.zeros_like(value) for key, value in export.items()}, run / NON_LORA_FILE)

    merged_dir = merge_lora(run, tiny_checkpoint, tmp_path / "merged")
    assert_same_weights(merged_dir, model.merge_and_unload())
    merged = FineCaptionForConditionalGeneration.from_pretrained(merged_dir)
    key = PEFT_PREFIX + "model.vision_tower.fast_mask_embed.weight"
    torch.testing.assert_close(merged.model.vision_tower.fast_mask_embed.weight, export[key], rtol=0, atol=0)
    assert not any("modules_to_save" in name or "original_module" in name for name in merged.state_dict())
