# The README's commands. Each target sets everything up first (seconds when .venv is complete).
.PHONY: setup serve serve-pacs test test-fast bench sample-model clean-data

PY := .venv/bin/python

setup:
	bash scripts/setup.sh

serve: setup
	bash scripts/serve.sh

serve-pacs: setup
	bash scripts/serve_pacs.sh

test: setup
	$(PY) -m pytest -q -p no:cacheprovider --timeout=900 --durations=30 tests

test-fast: setup
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" tests

bench: setup
	$(PY) -m bench.run_all

sample-model: setup
	$(PY) scripts/train_sample_model.py --output monailabel_app/model/medsegdiff_brain_2d.pt

clean-data:
	rm -rf data/
