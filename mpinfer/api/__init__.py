"""One request: building it (messages), pacing it (ratelimit, over the lanes' state in lanes, reading the
servers' rate-limit hints in hints), calling and classifying it (client), deciding what follows a failure
(retry), estimating it (tokens) and pricing it (prices).

``client`` and ``retry`` are not imported here: they load the openai SDK, which ``--status`` and the mock
server never need. Import them as ``mpinfer.api.client`` and ``mpinfer.api.retry``.
"""

from ..errors import NoKeysLeft
from .hints import Hints, read_hints, wait_hint
from .messages import ImageEncoder, Request, build_body_request, build_request
from .prices import Price, PriceTable, load_prices
from .ratelimit import Ending, Grant, LaneStats, LimitSource, SharedLimiter, Wait, WaitReason
from .tokens import image_size, image_tokens, text_tokens

__all__ = ["Ending", "Grant", "Hints", "ImageEncoder", "LaneStats", "LimitSource", "NoKeysLeft",
           "Price", "PriceTable", "Request", "SharedLimiter", "Wait", "WaitReason", "build_body_request",
           "build_request", "image_size", "image_tokens", "load_prices", "read_hints", "text_tokens", "wait_hint"]
