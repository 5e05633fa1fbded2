"""``portsentinel report``: one self-contained HTML page with plots of probes and bans.

``data`` reduces store records to small tables (pure), ``svg`` draws them, ``html`` lays out
the page and ``cli`` is the verb that reads the store and writes the file.
"""
