"""The stepwise-dpo application: the `stepdpo` command and one module per subcommand.

This is the only package that imports both halves (`labeler` and `trainer`); the libraries
never import it. Run it as `stepdpo …`, `python -m stepdpo …` or
`accelerate launch -m stepdpo train …`.
"""
