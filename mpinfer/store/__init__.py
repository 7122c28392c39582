"""The output and the files beside it: the record schema (records), locked whole-line appends, torn
tails and the resume scan (output), every lock on an output (locks), the run manifest (manifest),
repair and fresh start (repair).
"""

from .locks import RunInfo, RunLock, live_run
from .output import (
                     Appender,
                     BadLine,
                     OutputPaths,
                     Scan,
                     TailRepair,
                     companion,
                     iter_lines,
                     model_outputs,
                     repair_tail,
                     scan,
                     write_whole,
)
from .records import (
    Failure,
    FailureView,
    RecordView,
    Result,
    Usage,
    failure_view,
    is_refusal,
    record_id,
    same_model,
    view,
)

__all__ = ["Appender", "BadLine", "Failure", "FailureView", "OutputPaths", "RecordView",
           "Result", "RunInfo", "RunLock", "Scan", "TailRepair", "Usage", "companion",
           "failure_view", "is_refusal", "iter_lines", "live_run", "model_outputs", "record_id",
           "repair_tail", "same_model", "scan", "view", "write_whole"]
