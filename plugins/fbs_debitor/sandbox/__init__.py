"""Sandbox tools for the demo and the tests, never imported by runtime code (a test enforces it)
and left out of the image: the synthetic municipality generator, the SF1590 debtor-system
emulator and its payment files, and simulators of changes and cut-off moves in FBS.

``python -m fbs_debitor.sandbox ...`` is their command line.
"""
