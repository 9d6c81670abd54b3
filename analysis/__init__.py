"""Pure analysis: pcap bytes -> TCP segment events -> resets per vantage (-> timeline, verdict).

Imports nothing of capture-all's other packages and no IO or async library: it reads only the
file handles or bytes it is given.
"""
