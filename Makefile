# One-command entry points. `make demo` and `make test` install everything they need into .venv
# from scratch (pinned by constraints.txt), so they work on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo verify-sample test lint bench fmt

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,torch,peer]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/lessee demo

# The real-evidence check: NVIDIA's Hopper sample with its RIMs, as of their validity date.
verify-sample: install
	$(VENV)/bin/lessee gpu verify tests/assets/nvidia/hopper_legacy/attestationReport.txt \
	  --certs tests/assets/nvidia/hopper_legacy/gpuAkCertChain.txt \
	  --nonce 4cff7f5380ead8fad8ec2c531c110aca4302a88f603792801a8ca29ee151af2e \
	  --rim tests/assets/nvidia/rims/test_no_gpu --at 2024-06-01T00:00:00Z --revocation skip

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	PY=$(PY) scripts/gen_proto.sh --check

fmt: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) -m bench
