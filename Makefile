# The two commands: `make demo` runs the main job, `make test` runs the tests.
# Both set up .venv first (tools/setup.sh, quick when nothing changed).
.PHONY: demo test setup

setup:
	@bash tools/setup.sh

test:
	@bash tools/test.sh

demo: setup
	@bash tools/demo.sh
