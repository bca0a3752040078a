"""One module per verb: what each command does, over a `Repo` (store/repo.py).

cli.py parses the command line, calls the verb's function here, and prints
what it returns; these functions print nothing but progress bars.
"""
