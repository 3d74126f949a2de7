# The two commands: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fedcare-installed

.PHONY: demo test test-fast lint clean proto

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned, so nothing can pull a CUDA build through a version range.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[torch,plot,flamby,privacy,medical,tracking,dashboard,ray,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fedcare demo heart

# The library layers, type-checked strictly (the CLI and the example jobs are not).
TYPED := fedcare/core fedcare/algorithms fedcare/transport fedcare/site fedcare/server \
	fedcare/sim fedcare/provision fedcare/datasets fedcare/analytics fedcare/dashboard

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy $(TYPED)
	$(BIN)/python -m pytest -q

# Quick feedback while working: lint, types, and the tests not marked slow.
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy $(TYPED)
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache

# Regenerate the gRPC stubs after editing fedcare/transport/grpc/fedcare.proto.
proto: $(STAMP)
	$(BIN)/pip install --quiet -c constraints.txt grpcio-tools mypy-protobuf
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m grpc_tools.protoc -I . --python_out=. \
		--grpc_python_out=. --mypy_out=. --mypy_grpc_out=. fedcare/transport/grpc/fedcare.proto
