#!/usr/bin/env bash
# bf16 LoRA on several GPUs with ZeRO-3: LLaVA's scripts/v1_5/finetune_lora.sh, only the entry point changed.
# `deepspeed --module finecaption_plugin.train` or `accelerate launch -m finecaption_plugin.train` work as well.
# Merge afterwards: finecaption merge --model-path "$OUT" --model-base "$MODEL" --save-model-path "$OUT-merged"
set -euo pipefail
GPUS=${GPUS:-8}
MODEL=${MODEL:-./checkpoints/finecaption-8b}
DATA=${DATA:-./playground/data/compositioncap_train.jsonl}
IMAGES=${IMAGES:-./playground/data/images}
OUT=${OUT:-./checkpoints/finecaption-8b-lora}

torchrun --nproc_per_node "$GPUS" -m finecaption_plugin.train \
    --deepspeed ./scripts/zero3.json \
    --lora_enable True --lora_r 128 --lora_alpha 256 --mm_projector_lr 2e-5 \
    --model_name_or_path "$MODEL" \
    --version llama3 \
    --data_path "$DATA" \
    --image_folder "$IMAGES" \
    --image_aspect_ratio pad \
    --group_by_modality_length True \
    --bf16 True \
    --output_dir "$OUT" \
    --num_train_epochs 1 \
    --per_device_train_batch_size 4 \
    --gradient_accumulation_steps 4 \
    --evaluation_strategy "no" \
    --save_strategy "steps" \
    --save_steps 500 \
    --save_total_limit 2 \
    --learning_rate 2e-4 \
    --weight_decay 0. \
    --warmup_ratio 0.03 \
    --lr_scheduler_type "cosine" \
    --logging_steps 1 \
    --model_max_length 2048 \
    --gradient_checkpointing True \
    --dataloader_num_workers 4 \
    --lazy_preprocess True \
    --report_to none
