# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned: `pip install torch==2.13.0` takes the local CPU wheel on these machines,
# whereas an unpinned requirement would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: venv demo test install-test cluster-test clean

$(BIN)/mlem-ray: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[test]"
	touch $(BIN)/mlem-ray

venv: $(BIN)/mlem-ray

demo: venv
	$(BIN)/mlem-ray sweep --out runs/demo $(if $(wildcard runs/demo/sweep.json),--resume,)

# The install test (a fresh venv + pip install, 12 to 27 minutes) is left out: `make install-test`.
test: venv
	$(BIN)/python -m pytest -q -m "not install" tests

install-test: venv
	$(BIN)/python -m pytest -q -m install tests/test_install.py

# A real two-node local Ray cluster (ray start --head + a second node), a sweep submitted as a job.
cluster-test: venv
	$(BIN)/python -m pytest -q tests/test_multinode.py

clean:
	rm -rf $(VENV) runs
