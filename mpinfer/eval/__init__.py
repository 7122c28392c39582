"""Evaluation beyond the answers: prompt variants (variants.py: the --variants file) and the judge
(judge.py: its file and tasks; judging.py: running it after the answers). Not a facade: the rest
imports these modules."""
