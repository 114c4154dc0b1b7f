"""A cut-off date moved back (T3): the older range sent month by month behind the hourly run
(plan, one month at a time, finish), with a dry run, resume and a send-rate ceiling.
"""
