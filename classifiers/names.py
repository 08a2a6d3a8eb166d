"""Names shared by the classifiers and the pipeline that must import nothing heavy (the CLI's help pages read them)."""

MULTI_HEAD = "multi"  # the multi-layer head's name in results rows, head.json and on the command line
