# studykit: `make help` lists the targets. PY is the project's virtual environment.
PY ?= .venv/bin/python
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup test lint constraints prepare preprocess train evaluate predict export sweep sweep-ensemble bench bench-quick bench-best bench-overhead bench-speed bench-inference bench-face-landmarks bench-face68-training bench-class-folders clean

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-22s %s\n", $$1, $$2}'

setup: ## create .venv and install the project with its test tools, at the versions of constraints.txt
	python3 -m venv .venv
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -c constraints.txt -e ".[dev]"
	# facenet-pytorch 2.6.0 pins torch<2.3, numpy<2 and an old Pillow; it runs fine beside the pinned-up stack
	$(PY) -m pip install -c constraints.txt --no-deps "facenet-pytorch==2.6.0"

test: ## run the test suite (tiny real subsets of ../shared/data); the slowest tests are listed at the end
	$(PY) -m pytest -q --durations=15

lint: ## ruff on the whole tree (configured in pyproject.toml)
	$(PY) -m ruff check .

constraints: ## rewrite constraints.txt from .venv (after a green make test)
	{ head -2 constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -v -i "^studykit"; } > constraints.txt.new && mv constraints.txt.new constraints.txt

prepare: ## build the cached tensors of a data set (ARGS="data=cxr_landmarks")
	$(PY) prepare.py $(ARGS)

preprocess: ## run the cached face pipeline (MTCNN, CLAHE, dlib, crop, 4-channel) on JAFFE
	$(PY) preprocess.py data=jaffe $(ARGS)

train: ## the main job: X-ray landmarks, EfficientNet-Lite0 (ImageNet) + heat-map head, complete loss, warm-up + cosine, refit on train + val
	$(PY) train.py experiment=cxr_refit $(ARGS)

evaluate: ## test a finished run (ARGS="run_dir=outputs/<run>/<time>")
	$(PY) evaluate.py $(ARGS)

predict: ## a trained run on new images (ARGS="run_dir=outputs/<run>/<time> input=<image or folder>")
	$(PY) predict.py $(ARGS)

export: ## a trained run as ONNX + preprocessing.json (ARGS="run_dir=outputs/<run>/<time>")
	$(PY) export.py $(ARGS)

sweep: ## a model x loss grid as a Hydra multirun (ARGS to add overrides)
	$(PY) train.py -m experiment=cxr_complete model=resnet18,efficientnet_lite0 loss=mse,complete $(ARGS)

sweep-ensemble: ## train 5 seeds, then evaluate them as an ensemble with flip TTA
	$(PY) train.py -m experiment=cxr_complete seed=1,2,3,4,5 hydra.sweep.dir=multirun/ensemble $(ARGS)
	$(PY) evaluate.py ensemble=multirun/ensemble tta=true visualize=true

bench: ## landmark recipe search: seed protocol + main-job variants -> benchmarks/results/cxr_landmarks.json (hours on CPU; ARGS="--configs ...")
	$(PY) benchmarks/cxr_landmarks.py $(ARGS)

bench-quick: ## the benchmark script on a tiny subset, 1 epoch per phase (checks the script only)
	$(PY) benchmarks/cxr_landmarks.py --quick --results benchmarks/runs/quick.json $(ARGS)

bench-best: ## seed ensembles, flip TTA, heat-map vs direct head -> benchmarks/results/cxr_landmarks_best.json (GPU: ARGS=hardware=gpu)
	$(PY) benchmarks/cxr_landmarks_best.py $(ARGS)

bench-overhead: ## Lightning vs plain PyTorch loop, .pt cache vs PNG decoding -> benchmarks/results/framework_overhead.json
	$(PY) benchmarks/framework_overhead.py $(ARGS)

bench-speed: ## train/inference images/s per backbone: fp32/bf16 x NCHW/channels_last, torch.compile -> benchmarks/results/cpu_speed.json
	$(PY) benchmarks/cpu_speed.py $(ARGS)

bench-inference: ## CXR and FER+ models: torch NCHW / channels_last / bf16 vs onnxruntime -> benchmarks/results/inference.json
	$(PY) benchmarks/inference.py $(ARGS)

bench-face-landmarks: ## the 68-point stage on HELEN test and AFW (dlib; a face68 run with ARGS="--run <run>") -> benchmarks/results/face_landmarks.json
	$(PY) benchmarks/face_landmarks.py $(ARGS)

bench-face68-training: ## 68-point model: HELEN alone vs HELEN + AFW, same validation faces -> benchmarks/results/face68_training.json
	$(PY) benchmarks/face68_training.py $(ARGS)

bench-class-folders: ## class-folder defaults chosen on validation (JAFFE, FER+ subset) vs a plain loop -> benchmarks/results/class_folder_defaults.json
	$(PY) benchmarks/class_folder_defaults.py $(ARGS)

clean: ## remove caches, outputs and multirun folders
	rm -rf .cache outputs multirun benchmarks/runs
