# The two commands: `make demo` runs the main job, `make test` runs the tests.
# Both set up .venv first (tools/setup.sh, quick when nothing changed).
# `make demo MODALITY=depth` runs the demo on an RGB-depth bag with the bundled depth model;
# ARGS passes more demo options, e.g. `make demo ARGS="--night --seconds 10"`, or pytest's: `make test ARGS="-k node"`.
.PHONY: demo test setup
MODALITY ?= thermal

setup:
	@bash tools/setup.sh

test:
	@bash tools/test.sh $(ARGS)

demo: setup
	@bash tools/demo.sh --modality $(MODALITY) $(ARGS)
