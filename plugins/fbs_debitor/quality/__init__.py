"""Data quality (M4): the catalog of checks staff can act on, the Great Expectations checks on
every run's batch, the daily Danish staff report per branch, and its email.
"""
