"""Payments and write-offs back from the debtor system (P1, P2): the DaekningAfskrivning file
(``files``), where files arrive (``inbox``), applying each file once, holding doubtful movements and
writing everything back to FBS (``apply``), each vendor's rhythm (``rhythm``), and reconciliation.
"""
