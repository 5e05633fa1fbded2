"""What the kernel says about this host: addresses, routes, sockets in use, connection
tracking, SSH peers, NAT rules; the host view, the never-block set and the resolver.
"""
