"""One request: building it (messages), pacing it (ratelimit), calling and classifying it (client),
estimating it (tokens) and pricing it (prices).

``client`` is not imported here: it loads the openai SDK, which ``--status`` and the mock server never
need. Import it as ``mpinfer.api.client``.
"""

from ..errors import NoKeysLeft
from .messages import ImageEncoder, Request, build_body_request, build_request
from .prices import Price, PriceTable, load_prices
from .ratelimit import Grant, LaneStats, SharedLimiter
from .tokens import image_size, image_tokens, text_tokens

__all__ = ["Grant", "ImageEncoder", "LaneStats", "NoKeysLeft", "Price", "PriceTable", "Request", "SharedLimiter",
           "build_body_request", "build_request", "image_size", "image_tokens", "load_prices", "text_tokens"]
