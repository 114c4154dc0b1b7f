"""An eligible liability turned into an SF1590 claim: the schema-free values (``model``),
classification C1-C6, claim fields F1-F6, the builder of one row into one claim or a problem,
the stream of built pages, the SF1590 element mapping (the only module that knows element names;
M3), batches validated against the schemas (``messages``), the keyed prints of a claim's parties
(``fingerprints``), and what is written back to FBS (replacement CPRs, I1; staff tasks, M1).
"""
