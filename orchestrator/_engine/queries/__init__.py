"""Run queries answered by the processors' own stores (secondary indexes), fanned out by clients.

``model`` is the contract between the side that answers (processors, over HTTP) and the sides that ask
(CLI, UI): what a filter, a run summary and a page are. Everything else here is one of those two sides.
"""
