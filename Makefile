# Everything from nothing: a venv in the checkout, torch (the wheels on this machine's disk, never a fresh
# CUDA download), the package in editable mode and its test extras.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install test lint bench clean demo demo-model

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet $(TORCH_PINS) -e '.[test]'
	# LLaVA's own code for tests/test_patches_llava.py; --no-deps: its pins would replace torch and transformers.
	$(PY) -m pip install --quiet --no-deps llava-torch==1.2.2.post1
	touch $@

# The README's first command: the shipped model on a generated test split, through lmms-eval; prints the metric
# table, the attribute accuracy and where the galleries are. DEMO_ARGS="--limit 20" for a quick run.
DEMO_OUTPUT ?= demo-output
DEMO_ARGS ?=
demo: install
	$(VENV)/bin/finecaption demo --output $(DEMO_OUTPUT) $(DEMO_ARGS)

# Rebuilds the shipped model (finecaption_plugin/demo_model) from nothing: generated training scenes (seed 0), the
# demo preset with a tokenizer learnt from their text and its towers pretrained on generated regions (the part
# Alpha-CLIP's weights play for the full model) in two stages: texture weighted, then category
# (demo.DEMO_TOWER_ATTRIBUTE_WEIGHTS, DEMO_TOWER_REFINE_WEIGHTS); a captioning run on the CPU with the whole
# pretrained vision side (CLIP, ConvNeXt, mask branch, adapters) kept frozen (training the towers with the captioning
# loss erodes what they learnt) and the projector and language model trained fully, then a float16 export. 57:49
# on the 2-core Intel Xeon, timed solo (benchmarks/README.md, item 18), about 95-100 min on a 2-core AMD EPYC, whose
# steps are 1.7x slower.
DEMO_BUILD ?= build/demo-model
DEMO_TRAIN_IMAGES ?= 3000
DEMO_STEPS ?= 2100
DEMO_TOWER_STEPS ?= 5500
DEMO_REFINE_STEPS ?= 4500
# More `finecaption train` flags (later ones win).
DEMO_TRAIN_FLAGS ?=
demo-model: install
	$(VENV)/bin/finecaption synth $(DEMO_BUILD)/data --images $(DEMO_TRAIN_IMAGES) --seed 0 --format llava
	$(VENV)/bin/finecaption demo-init $(DEMO_BUILD)/init --seed 0 \
	    --tower-steps $(DEMO_TOWER_STEPS) --refine-steps $(DEMO_REFINE_STEPS)
	$(VENV)/bin/finecaption train --model_name_or_path $(DEMO_BUILD)/init --version llama3 \
	    --data_path $(DEMO_BUILD)/data/train.json --image_folder $(DEMO_BUILD)/data \
	    --output_dir $(DEMO_BUILD)/run --max_steps $(DEMO_STEPS) \
	    --per_device_train_batch_size 16 --learning_rate 5e-4 --lr_scheduler_type cosine --warmup_steps 100 \
	    --weight_decay 0.01 --group_by_modality_length True --model_max_length 512 --dataloader_num_workers 0 \
	    --logging_steps 25 --save_steps 150 --save_total_limit 2 --seed 0 --report_to none \
	    --freeze_mask_branch True --freeze_connector True $(DEMO_TRAIN_FLAGS)
	$(VENV)/bin/finecaption demo-export $(DEMO_BUILD)/run

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest -q

lint: install
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
