"""One request: building it (messages), calling it (client, over the HTTP clients in http, with
its ticket in ticket), reading its answer (answer), classifying a failure (failures: the kinds and
the one table), deciding what follows a failure (retry), estimating it (tokens) and pricing it
(prices); the endpoints table (endpoints).

Pacing it is the limiter's (mpinfer.limits), which also reads the servers' rate-limit hints.
``client`` is not imported here: it loads the openai SDK, which ``--status`` and the mock server
never need. Import it as ``mpinfer.api.client``; ``failures`` and ``retry`` load no SDK.
"""

from ..errors import NoKeysLeft
from .messages import ImageEncoder, Request, build_body_request, build_request
from .prices import Price, PriceTable, load_prices
from .tokens import image_size, image_tokens, text_tokens

__all__ = ["ImageEncoder", "NoKeysLeft", "Price", "PriceTable", "Request", "build_body_request",
           "build_request", "image_size", "image_tokens", "load_prices", "text_tokens"]
