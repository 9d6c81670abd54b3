"""One host: what to run there, what its output means, and the transport that carries it.

Only ``remote.ssh`` imports asyncssh; everything else here is plain data and parsing.
"""
