"""An OpenAI-compatible mock chat-completions server, plus a subprocess helper.

The package ships this server so that ``--demo``, the test suite and the
benchmarks can exercise the real HTTP path (connection pooling, retries,
timeouts, rate limiting) without touching a paid API. It therefore has to be
fast and faithful rather than feature complete:

* It is written directly on ``asyncio`` protocols with a small HTTP/1.1 parser
  (keep-alive, ``Content-Length`` and chunked request bodies, pipelining,
  ``Connection: close``) so that thousands of concurrent connections and well
  over 2,000 simple completions per second fit on a single core.
* Faults (429, quota, 500, hang, connection reset, malformed JSON) are drawn
  from one seeded ``random.Random`` per server, and can also be scripted per
  task key so that tests are deterministic.
* Sliding-window ``rpm``/``tpm`` limits and their statistics let tests check a
  client-side rate limiter from the server's point of view. The window is
  ``window_s`` long (60 s, as OpenAI's per-minute limits, unless shortened so
  that a test can watch several windows pass in a few seconds); the stats
  count ``window_violations``, arrivals that a client respecting the limit
  would never have sent.

Only the standard library is used here, so the server starts in any
environment the package itself runs in.

Run it with ``python -m mpinfer.mockserver --port 0``; it prints exactly one
line ``MOCK_READY http://127.0.0.1:PORT/v1`` once it is listening.

The code is split by job, one module each:

* ``config``: ``MockConfig``, every tunable with its default, and the parsing of runtime settings;
* ``http``: the HTTP/1.1 request parser, response writer and ``asyncio`` connection protocol;
* ``chat``: validation of chat.completions request bodies, as OpenAI validates them;
* ``stats``: the counters behind ``/_mock/stats`` and their sliding windows;
* ``limits``: the rpm/tpm check, the ``x-ratelimit-*`` headers and their duration format;
* ``files``, ``batches``, ``batch_faults``, ``batch_routes``: the Files and Batches
  APIs (uploads, batches worked in the background through OpenAI's states, their input and output
  lines, the fault options of ``POST /_mock/batches``, and their routing);
* ``completions``: answering one chat request: auth, limits, fault draw, completion, delivery;
* ``answers``: the assistant message a completion carries: refusals, reasoning
  models' thinking, truncation;
* ``images``: the limit on image data per request (OpenAI's over-limit 400);
* ``azure``: Azure OpenAI's deployment paths, ``api-version`` and ``api-key``,
  handed to the chat endpoint;
* ``responses``: ``/v1/responses`` and ``/v1/embeddings``;
* ``server``: ``MockServer``: lifecycle, routing and the ``/_mock/*`` control API;
* ``cli``: the command line, ``serve`` and ``main`` (``python -m mpinfer.mock`` runs it);
* ``process``: ``MockServerProcess``, the server in a subprocess.

Not a facade: ``mpinfer.mockserver`` re-exports the public names, and inside the package the
modules import each other. This ``__init__`` imports nothing, so the server process
(``python -m mpinfer.mock``) loads only what serving needs, not the subprocess helper's imports.
"""
