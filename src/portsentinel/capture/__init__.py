"""Capture sources: where frames come from (pcap files, AF_PACKET sockets, bound listeners).

Every source yields plain ``(timestamp, linktype, frame)`` tuples; decoding happens elsewhere.
"""
