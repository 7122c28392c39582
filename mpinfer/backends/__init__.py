"""Where tasks run: interchangeable backends behind one driver (see driver.RunState).

- ``local``: worker processes forked on this machine (the default);
- ``ray``: actors on a Ray cluster (``--backend ray``; ``pip install mpinfer[ray]``);
- ``batch``: the OpenAI Batch API (``--backend batch``): its plan (batch_plan), submission
  (batch_submit), merge (batch_merge) and cancel (batch_cancel).

Beside them: base (the Backend protocol the driver runs), runner (one task's life, shared by local
and ray), worker (a local worker process) and ahead (requests built ahead of the -c slots).

Not a facade: import the modules (``mpinfer.backends.local`` ...), and this ``__init__`` imports
nothing, so that choosing one backend never loads another's imports (ray, the openai SDK).
"""
