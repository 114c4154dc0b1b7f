"""Keeping claims already sent true (U1-U4): FBS compared with what the debtor system was told
(``detection``), the versioned change messages sent in order per liability (``sending``), a
liability's whole trail (``history``, M2), and the debtor side reconciled with FBS's truth.
"""
