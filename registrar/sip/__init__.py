"""The SIP core: grammar, messages, digest, transaction and proxy state machines; pure, no I/O.

setup.py compiles this package with mypyc when it can; the same source runs as Python otherwise.
"""

# Whether this is the compiled form: said at start-up, as it sets what a REGISTER costs.
COMPILED = not __file__.endswith(".py")
