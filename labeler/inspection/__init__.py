"""`stepdpo inspect` internals: one job per module.

``stats`` reads only the columns it needs and summarises them with Arrow compute and numpy;
``agreement`` scores a judge against human labels or another judge; ``show`` prints examples;
``plots`` draws PNGs from a summary; ``html_report`` packs everything into one offline HTML file.
None of them imports anything heavy at module top (matplotlib loads only when a plot is drawn).
"""
