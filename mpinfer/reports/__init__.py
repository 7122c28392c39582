"""What is read, never written, of an output: status, validate, export, the dry run, the run
summary, and the text that the command line prints of each (text).

Not a facade: import the modules (``mpinfer.reports.status`` ...), and this ``__init__`` imports
nothing, so that each command loads only its own report: a facade would load the dry run's request
building and the HTML report for ``--status`` and ``--cancel``, and every report for a run.
"""
