# make run:  set up, bring the emulated lab up, run the validation suites -> reports/
# make test: set up, lint, run hil's own tests (what CI runs)
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
DEVICES ?= devices.toml
PYTEST_ARGS ?=

.PHONY: setup run test lint lab-up lab-down lab-status bench clean

setup:
	@bash scripts/setup.sh

# The exit status is pytest's (0 passed, 1 a failed budget or check), or 75 when only the lab failed
# (retry); the HTML report is built either way.
run: setup
	@rm -rf reports/allure-results reports/raw reports/summary.json && mkdir -p reports
	$(BIN)/hil --devices $(DEVICES) lab up
	@status=0; $(BIN)/pytest suites/ --hil-devices $(DEVICES) --junitxml=reports/junit.xml \
		--alluredir reports/allure-results $(PYTEST_ARGS) || status=$$?; \
	$(BIN)/hil report --results reports/allure-results --out reports/allure-report || true; \
	exit $$status

test: setup lint
	@mkdir -p reports
	$(BIN)/pytest tests/ --junitxml=reports/tests-junit.xml $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .

lab-up: setup
	$(BIN)/hil --devices $(DEVICES) lab up

lab-down: setup
	$(BIN)/hil --devices $(DEVICES) lab down

lab-status: setup
	$(BIN)/hil --devices $(DEVICES) lab status

bench: setup
	$(BIN)/python benchmarks/roundtrip.py --devices $(DEVICES)
	$(BIN)/python benchmarks/lab_speed.py
	$(BIN)/python benchmarks/deploy_speed.py --devices $(DEVICES)
	$(BIN)/python benchmarks/runner_fidelity.py --devices $(DEVICES)
	$(BIN)/python benchmarks/parallel_speed.py

clean:
	rm -rf reports .venv *.egg-info
