"""One request: building it (messages), calling it (wire, without the SDK, over the aiohttp pool in
pool; or client, through the openai SDK over the HTTP clients in http; either with its ticket in
ticket), reading its answer (answer), classifying a failure (failures: the kinds and the one
table), deciding what follows a failure (retry), estimating it (tokens) and pricing it (prices);
the endpoints table (endpoints).

Pacing it is the limiter's (mpinfer.limits), which also reads the servers' rate-limit hints.

Not a facade: import the modules (``mpinfer.api.messages``, ``mpinfer.api.failures`` ...), and this
``__init__`` imports nothing. ``wire`` loads aiohttp, and ``client`` the openai SDK (and ``http``
httpx2), which ``--status``, ``--validate``, ``--dry-run``, ``--export``, ``--report`` and the mock
server never need (tests/test_imports.py), and a run on the default transport never needs the SDK;
a facade would load them for all of those.
"""
