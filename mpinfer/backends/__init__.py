"""Where tasks run: interchangeable backends behind one driver (see driver.RunState).

- ``local``: worker processes forked on this machine (the default);
- ``ray``: actors on a Ray cluster (``--backend ray``; ``pip install mpinfer[ray]``);
- ``batch``: the OpenAI Batch API (``--backend batch``): its plan (batch_plan), submission
  (batch_submit), merge (batch_merge) and cancel (batch_cancel).
"""
