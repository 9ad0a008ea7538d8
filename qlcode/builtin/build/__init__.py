"""Build-time scripts that make the built-in assets: the micro model (tokenizer and initialisation,
pretraining, evaluation) and the standard-library datasets. Nothing in the library imports them.

    python -m qlcode.builtin.build.micro_codellama    # tokenizer + seeded initialisation
    python -m qlcode.builtin.build.pretrain           # pretraining on the standard library
    python -m qlcode.builtin.build.evaluate           # the micro model's measured table
    python -m qlcode.builtin.build.stdlib_instruct    # builtin:stdlib-python-instruct
    python -m qlcode.builtin.build.stdlib_doctests    # the stdlib-doctests benchmark
    python -m qlcode.builtin.build.python_basics      # builtin:python-basics (problems with asserts)
"""
