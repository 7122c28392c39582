"""What is read, never written, of an output: status, validate, export, the dry run, the run
summary, and the text that the command line prints of each (text).
"""
