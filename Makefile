# Quick start:  make demo   (synthetic labs end to end)   |   make test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch torchvision
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/leukoshift demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache

# Manifests of the real data beside the checkout (../shared/data) in runs/data/.
SHARED ?= ../shared/data
DATA ?= runs/data
.PHONY: data-shared
data-shared: $(STAMP)
	$(BIN)/leukoshift data import pbc $(SHARED)/pbc --source pbc --out $(DATA)/pbc.csv
	$(BIN)/leukoshift data import folder $(SHARED)/bccd_crops --source bccd_crops --out $(DATA)/bccd_crops.csv
	$(BIN)/leukoshift data import wbcseg $(SHARED)/cellavision --source cellavision --out $(DATA)/cellavision.csv
	$(BIN)/leukoshift data import folder $(SHARED)/bionet --source bionet --out $(DATA)/bionet.csv
	$(BIN)/leukoshift data import unlabeled $(SHARED)/raabin_unlabeled --source raabin --out $(DATA)/raabin.csv
	$(BIN)/leukoshift data import unlabeled $(SHARED)/bccd_smears/BCCD/JPEGImages --source bccd_smears --out $(DATA)/bccd_smears.csv
