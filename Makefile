# STEGO, unpacked: two commands.
#   make book   execute every chapter (offline profile) and build the HTML book in _build/html
#   make test   unit tests, notebook tests (nbval), the book build, every chapter in the paper profile at
#               its smoke scale on a miniature world, the wheel in fresh venvs, and a headless-browser check
# Both install what is missing into .venv first (Python 3.11+; PYTHON=... picks the interpreter).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAGE := tools/stage.sh
export PYTHONHASHSEED := 0

.PHONY: book test install lint unit execute build-book nbval paper-smoke wheel browser clean

book:
	@[ "$(MAKELEVEL)" != 0 ] || rm -f _build/stage_times.txt
	@$(MAKE) --no-print-directory install
	@$(STAGE) execute $(PY) tools/execute_notebooks.py --profile offline --out _build/executed
	@$(STAGE) build-book $(PY) tools/build_book.py --executed _build/executed

test:
	@rm -f _build/stage_times.txt
	@$(MAKE) --no-print-directory install
	@$(STAGE) lint $(VENV)/bin/ruff check --select F stego_lite tests tools benchmarks
	@$(STAGE) unit $(PY) -m pytest tests --ignore=tests/book -q -p no:cacheprovider
	@$(MAKE) --no-print-directory book
	@$(STAGE) nbval $(PY) -m pytest --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg \
		_build/executed/notebooks -q -p no:cacheprovider
	@$(MAKE) --no-print-directory paper-smoke wheel
	@$(STAGE) browser-setup tools/ensure_chromium.sh
	@$(STAGE) browser $(PY) -m pytest tests/book -q -p no:cacheprovider
	@echo "Stage times:"; cat _build/stage_times.txt

# Every chapter with profile="paper", scale="smoke" on the CPU, on a miniature copy of STEGO's data, DINO
# weights and released checkpoint made by tools/paper_world.py (no download); outputs are not compared.
paper-smoke:
	@$(STAGE) paper-smoke $(PY) tools/execute_notebooks.py --profile paper --scale smoke \
		--world _build/paper-world --out _build/paper-smoke

# sdist and wheel; the wheel in a fresh venv (pyproject's loose dependencies) and beside an older torch
wheel:
	@$(STAGE) wheel $(PY) tools/wheel_check.py --out _build/wheel-check

install:
	@$(STAGE) install tools/install.sh $(PYTHON) $(VENV)

clean:
	rm -rf _build
