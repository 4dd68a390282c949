#!/usr/bin/env bash
# QLoRA on one consumer GPU: LLaVA's scripts/v1_5/finetune_task_lora.sh with --bits 4, only the entry point changed.
# MODEL is a FineCaption checkpoint, e.g. from
#   finecaption convert --from llava-hr ./llava-hr-7b-sft-1024 ./checkpoints/finecaption-7b [--alpha-clip clip_l14_336_grit_20m_4xe.pth]
# DATA is LLaVA conversation JSON (optionally with a "mask" per sample) or CompositionCap JSONL.
# Without DeepSpeed, `finecaption train <same flags minus --deepspeed>` runs the same job.
set -euo pipefail
MODEL=${MODEL:-./checkpoints/finecaption-7b}
DATA=${DATA:-./playground/data/compositioncap_train.jsonl}
IMAGES=${IMAGES:-./playground/data/images}
OUT=${OUT:-./checkpoints/finecaption-7b-qlora}

deepspeed --module finecaption_plugin.train \
    --deepspeed ./scripts/zero2.json \
    --lora_enable True --lora_r 128 --lora_alpha 256 --mm_projector_lr 2e-5 \
    --bits 4 --double_quant True --quant_type nf4 \
    --model_name_or_path "$MODEL" \
    --version vicuna_v1 \
    --data_path "$DATA" \
    --image_folder "$IMAGES" \
    --image_aspect_ratio pad \
    --group_by_modality_length True \
    --bf16 True \
    --output_dir "$OUT" \
    --num_train_epochs 1 \
    --per_device_train_batch_size 1 \
    --gradient_accumulation_steps 16 \
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
