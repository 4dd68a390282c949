#!/usr/bin/env bash
# FineCaption's training stages after LLaVA-HR's projector pretraining (stage 1, --tune_mm_mlp_adapter True):
# stage 2 trains only the mask branch on masked data; stage 3 trains everything.
set -euo pipefail
GPUS=${GPUS:-8}
MODEL=${MODEL:-./checkpoints/finecaption-8b}
DATA=${DATA:-./playground/data/compositioncap_train.jsonl}
IMAGES=${IMAGES:-./playground/data/images}
OUT=${OUT:-./checkpoints/finecaption-8b}

common=(
    --version llama3 --data_path "$DATA" --image_folder "$IMAGES" --image_aspect_ratio pad
    --bf16 True --num_train_epochs 1 --per_device_train_batch_size 4 --gradient_accumulation_steps 4
    --evaluation_strategy "no" --save_strategy "steps" --save_steps 500 --save_total_limit 2
    --weight_decay 0. --warmup_ratio 0.03 --lr_scheduler_type "cosine" --logging_steps 1
    --model_max_length 2048 --gradient_checkpointing True --dataloader_num_workers 4 --report_to none
)

torchrun --nproc_per_node "$GPUS" -m finecaption_plugin.train --deepspeed ./scripts/zero2.json \
    --model_name_or_path "$MODEL" --tune_mask_branch True --learning_rate 1e-4 \
    --output_dir "$OUT-stage2" "${common[@]}"

torchrun --nproc_per_node "$GPUS" -m finecaption_plugin.train --deepspeed ./scripts/zero3.json \
    --model_name_or_path "$OUT-stage2" --full_finetune True --learning_rate 2e-5 \
    --output_dir "$OUT-stage3" "${common[@]}"
