"""Which liabilities may go, and from when: rules T1-T6 (and the C3 hold of an agency) in
``rules``; the liabilities a run covers (the hourly run's, or one backfill month's) in ``scope``;
a cut-off date moved back or forward in FBS noticed and recorded (T3) in ``cut_off``.
"""
