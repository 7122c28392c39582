"""The output and the files beside it: the record schema (records), locked whole-line appends, torn
tails and the resume scan (output), every lock on an output (locks), the run manifest (manifest),
repair and fresh start (repair), an answered task's line (answers), whole-file replacement (atomic),
ids held compactly (idset), the resume's done ids kept beside the output (done_index), whether a
file is still the one read (marks), the file such indexes are kept in (blobfile), an output
read a block of lines at a time (blocks), a big file read in parts by forked children (parts), the
resume scan's blocks (block_scan) and its ids matched with the input's rows in order (row_match).

Not a facade: import the modules (``mpinfer.store.output``, ``mpinfer.store.records`` ...), and
this ``__init__`` imports nothing. One naming them all would close import circles (which
tests/test_layout.py forbids): ``answers`` needs ``api.answer`` and ``mpinfer.inputs``, which come
back into ``store`` (``api.responses`` for the record's fields, the input check and tasks for the
output and the id sets); ``repair`` reads the batch plan (backends) and ``manifest`` names the run
summary (reports), and both of those write through ``store.atomic``.
"""
