"""The transfer run: the hourly steps ``debitor_transfer`` and the CLI share (``run``), the dry
run that writes what would be sent, and the printed summary of a run.
"""
